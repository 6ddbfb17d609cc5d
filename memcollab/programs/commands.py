"""Placeholder: pipeline commands (run, build-memory, evaluate)."""
import typer
def register(app: typer.Typer) -> None:
    return None
