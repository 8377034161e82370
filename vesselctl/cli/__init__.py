"""The Typer application. One module per command; heavy libraries load inside the commands so
`vesselctl --help` stays instant."""

from __future__ import annotations

import typer

from vesselctl import __version__
from vesselctl.cli import config as config_cmd
from vesselctl.cli import convert as convert_cmd
from vesselctl.cli import env as env_cmd
from vesselctl.cli import evaluate as evaluate_cmd
from vesselctl.cli import inspect as inspect_cmd
from vesselctl.cli import predict as predict_cmd
from vesselctl.cli import prepare as prepare_cmd
from vesselctl.cli import report as report_cmd
from vesselctl.cli import train as train_cmd
from vesselctl.cli import validate as validate_cmd
from vesselctl.cli.config import register_stage_settings

app = typer.Typer(
    name="vesselctl",
    help="Fine-tune, run and measure text-promptable segmentation models on blood-vessel images.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vesselctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """vesselctl: prepare -> validate -> train -> convert -> predict -> evaluate -> report."""


# Pipeline order is the order `vesselctl --help` lists them in.
_COMMANDS = [
    ("prepare", prepare_cmd.prepare, "vesselctl.settings.prepare:PrepareSettings"),
    ("validate", validate_cmd.validate, "vesselctl.settings.validate:ValidateSettings"),
    ("train", train_cmd.train, "vesselctl.settings.train:TrainSettings"),
    ("convert", convert_cmd.convert, "vesselctl.settings.convert:ConvertSettings"),
    ("inspect", inspect_cmd.inspect, "vesselctl.settings.convert:InspectSettings"),
    ("predict", predict_cmd.predict, "vesselctl.settings.predict:PredictSettings"),
    ("evaluate", evaluate_cmd.evaluate, "vesselctl.settings.evaluate:EvaluateSettings"),
    ("report", report_cmd.report, "vesselctl.settings.report:ReportSettings"),
]
for _name, _command, _settings in _COMMANDS:
    app.command(_name)(_command)
    register_stage_settings(_name, _settings)
app.command("env")(env_cmd.env)
app.command("config")(config_cmd.config)


def main() -> None:
    """Console-script entry point."""
    app()
