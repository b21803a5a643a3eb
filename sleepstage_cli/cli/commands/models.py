"""``sleepstage models``: the model zoo — list, show (the model card), install (a file or URL) and remove models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from sleepstage_cli.cli import console as con
from sleepstage_cli.cli.app import app, command
from sleepstage_cli.errors import InputError

_EXAMPLE = """Examples:

  sleepstage models install model.pt --name my-lab

  sleepstage models install https://example.org/sleepedf20.pt --sha256 3f5a...e1

  sleepstage models list

  sleepstage models show my-lab

  sleepstage score night.edf -o night.csv --model my-lab

  sleepstage models remove my-lab
"""

models_app = typer.Typer(
    help="The model zoo: models installed in your data folder (verified by sha256 on every use) and those "
         "shipped with sleepstage. Any --model of 'sleepstage score' takes their names.",
    no_args_is_help=True, rich_markup_mode="markdown", epilog=_EXAMPLE,
    context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(models_app, name="models")


def _entries() -> list[dict]:
    """Every model by name: installed ones (hash-checked when shown), then shipped ones."""
    from sleepstage_cli.model.registry import models_dir, read_index
    from sleepstage_cli.model.zoo import shipped_models

    rows = [{"name": n, "source": "installed", "path": models_dir() / e["file"], "sha256": e.get("sha256")}
            for n, e in read_index().items()]
    rows += [{"name": n, "source": "shipped", "path": p, "sha256": None} for n, p in shipped_models().items()]
    return rows


def _summary(entry: dict) -> list[str]:
    """A row of the list: network, channels, trained on, validation accuracy, hash prefix."""
    from sleepstage_cli.digests import SHORT, file_sha256
    from sleepstage_cli.model.modelmeta import peek_metadata

    path = entry["path"]
    if not path.is_file():
        return ["?", "?", "file missing", "—", "—"]
    digest = file_sha256(path)
    meta = peek_metadata(path) or {}
    training = meta.get("training") or {}
    dataset = training.get("dataset")
    data = dataset.get("name") if isinstance(dataset, dict) else "?"
    acc = (meta.get("validation") or {}).get("accuracy")
    changed = entry["sha256"] is not None and digest != entry["sha256"]
    return [str((meta.get("architecture") or {}).get("net", "?")),
            "+".join(k.upper() for k in (meta.get("channel_spec") or {}).get("kinds", [])) or "?",
            f"{data} ({len(training.get('train_nights') or [])} n.)",
            f"{100 * acc:.1f}" if isinstance(acc, (int, float)) else "—",
            "CHANGED" if changed else digest[:SHORT]]


@models_app.command("list", epilog="Example:\n\n  sleepstage models list")
@command
def list_models() -> None:
    """List the installed and shipped models: network, channels, what they were trained on, accuracy, hash."""
    from sleepstage_cli.model.registry import models_dir

    entries = _entries()
    if not entries:
        con.info(f"no model is installed (in {models_dir()}) or shipped; install one with "
                 "'sleepstage models install FILE|URL'")
        return
    table = Table(title="Models", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False)
    table.add_column("name", overflow="fold", min_width=8)
    table.add_column("source")
    table.add_column("network", overflow="fold")
    table.add_column("channels", overflow="fold")
    table.add_column("trained on", overflow="fold")
    table.add_column("val.\nacc. %", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    for e in entries:
        table.add_row(e["name"], e["source"], *_summary(e))
    con.out.print(table)
    con.info(f"installed models: {models_dir()}")


def _card_of(name: str) -> dict:
    """The card of a model: the one written beside it when it matches the file's hash, else one made now."""
    import json

    from sleepstage_cli.digests import file_sha256
    from sleepstage_cli.model.card import card_of_model_file, card_paths
    from sleepstage_cli.model.zoo import resolve_model

    path = resolve_model(name)
    json_path, _ = card_paths(path)
    if json_path.is_file():
        try:
            card = json.loads(json_path.read_text(encoding="utf-8"))
            if isinstance(card, dict) and card.get("content_sha256") == file_sha256(path):
                return card
        except (OSError, ValueError):
            pass
    return card_of_model_file(path, name=path.stem if Path(name).exists() else name)


@models_app.command("show", epilog="Examples:\n\n  sleepstage models show my-lab\n\n"
                                   "  sleepstage models show model.pt --json")
@command
def show(
    name: Annotated[str, typer.Argument(help="An installed or shipped model's name, or a model file.",
                                        show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the card's JSON instead of its Markdown.")] = False,
) -> None:
    """Print a model's card: data, channels, conditioning, network, metrics, calibration, use, licence, hash."""
    from rich.markdown import Markdown

    from sleepstage_cli.model.card import card_markdown

    card = _card_of(name)
    if as_json:
        import json

        typer.echo(json.dumps(card, indent=2, ensure_ascii=False))
        return
    con.out.print(Markdown(card_markdown(card)), width=min(con.out.width, 100))


def _crossval_section(run: Path | None) -> dict | None:
    """The cross-validated metrics of a crossval run folder (its card.json), for --crossval."""
    if run is None:
        return None
    from sleepstage_cli.fsutil import read_json

    card_file = run / "card.json" if run.is_dir() else run
    if not card_file.is_file():
        raise InputError("holds no card.json (is it a finished 'sleepstage crossval' run folder?)", run)
    card = read_json(card_file, "crossval card")
    section = card.get("cross_validation") if isinstance(card, dict) else None
    if not isinstance(section, dict) or card.get("kind") != "crossval":
        raise InputError("is not the card of a cross-validation run", card_file)
    return section


@models_app.command("install", epilog="Examples:\n\n  sleepstage models install model.pt --name my-lab\n\n"
                                      "  sleepstage models install https://example.org/m.pt --sha256 HEX\n\n"
                                      "  sleepstage models install final.pt --name sedf20 --crossval cv-run/")
@command
def install(
    source: Annotated[str, typer.Argument(help="A model file, or an http(s) URL of one.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Name to install it under (default: the file's "
                                                "name without .pt).", show_default=False)] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", help="The file's expected sha256: anything else is "
                                                  "refused and nothing is installed.", show_default=False)] = None,
    crossval: Annotated[Optional[Path], typer.Option("--crossval", help="A crossval run folder whose "
                                                     "cross-validated metrics go into the model's card.",
                                                     show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model of that name.")] = False,
) -> None:
    """Install a model file or URL under a name; verified as a sleepstage model, recorded with its sha256."""
    from sleepstage_cli.model import registry

    entry = registry.install(source, name=name, sha256=sha256, force=force, crossval=_crossval_section(crossval),
                             progress=con.err.is_terminal, on_download=lambda url: con.info(f"downloading {url}"))
    con.out.print(f"installed {entry['name']} (sha256 {entry['sha256'][:12]}) in {registry.models_dir()}")
    con.info(f"use it with: sleepstage score NIGHT.edf -o NIGHT.csv --model {entry['name']}")


@models_app.command("remove", epilog="Example:\n\n  sleepstage models remove my-lab")
@command
def remove(
    name: Annotated[str, typer.Argument(help="An installed model's name.", show_default=False)],
) -> None:
    """Remove an installed model (its file and card); shipped models are never removed."""
    from sleepstage_cli.model import registry

    entry = registry.remove(name)
    con.out.print(f"removed {entry['name']} (sha256 {entry['sha256'][:12]})")
