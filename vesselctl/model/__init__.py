"""model layer of vesselctl (see ARCHITECTURE in the README)."""
