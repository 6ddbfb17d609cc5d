"""Placeholder: replaced by the eval owner."""
import typer
data_app = typer.Typer(no_args_is_help=True)
