"""The `lookalike` command: a thin layer over `Library`, `indexer` and the HTTP app."""

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import indexer
from .config import Settings
from .errors import LookalikeError
from .library import Library, Match

app = typer.Typer(help="Find duplicates, similar photos and more in a photo library.", no_args_is_help=True)
console = Console(stderr=True)
DataDir = Annotated[
    Path | None, typer.Option(help="Data directory [default: $LOOKALIKE_DATA_DIR or ~/.local/share/lookalike]")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(data_dir: Path | None, **overrides) -> Settings:
    values = {"data_dir": data_dir, **overrides}
    return Settings(**{key: value for key, value in values.items() if value is not None})


def _open(settings: Settings) -> Library:
    return Library.from_settings(settings)


@app.command()
def index(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to index, recursively.")],
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [default: all cores].")] = None,
) -> None:
    """Index every image under DIRECTORY; files already indexed and unchanged are skipped."""
    settings = _settings(data_dir)
    with (
        _open(settings) as library,
        Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("index", total=None)

        def done(job: indexer.Job, error: str | None) -> None:
            if error:
                progress.console.print(f"[yellow]skipped[/] {job.path}: {error}")
            progress.advance(task)

        try:
            report = indexer.run(
                library,
                directory,
                workers,
                lambda total: progress.update(task, total=total),
                done,
                settings.checkpoint_seconds,
            )
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: what was indexed is saved; run the same command to resume")
            raise typer.Exit(130) from None
        if library.due_for_training():
            with console.status("training the local features index (once; it keeps searches fast)"):
                library.maintain()
    console.print(
        f"indexed {report.indexed}, unchanged {report.unchanged}, removed {report.removed} (gone from disk), "
        f"failed {len(report.failed)}"
    )
    if report.failed:
        console.print("failed files were left out; fix or remove them and run index again to retry")


@app.command()
def train(
    engine: Annotated[str, typer.Option(help="The engine whose index to train.")] = "local",
    data_dir: DataDir = None,
) -> None:
    """(Re)train the local features' compressed index now; `index` does this by itself as the library grows."""
    with _open(_settings(data_dir)) as library, console.status(f"training the {engine} index"):
        library.train(engine, force=True)
    console.print(f"trained the {engine} index")


@app.command()
def search(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    engine: Annotated[str, typer.Option(help="Engine name, or 'all'.")] = "all",
    k: Annotated[int, typer.Option("-k", min=1, help="Results per engine.")] = 10,
    mirrored: Annotated[bool, typer.Option(help="Also find mirrored copies (local features).")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Find the stored images most like IMAGE."""
    with _open(_settings(data_dir)) as library:
        data = image.read_bytes()
        if engine == "all":
            found = library.search_all(data, k=k, mirrored=mirrored)
        else:
            found = {engine: library.similar_to_image(engine, data, k=k, mirrored=mirrored)}
    if as_json:
        print(json.dumps({name: [asdict(m) for m in matches] for name, matches in found.items()}, indent=2))
        return
    for name, matches in found.items():
        _print_matches(f"{name}: nearest to {image}", matches)


@app.command()
def dupes(
    threshold: Annotated[
        float | None, typer.Option(help="Largest Hamming distance counted as a duplicate [default: 64].")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """List every group of near-duplicate images in the library (by perceptual hash)."""
    with _open(_settings(data_dir)) as library:
        groups = library.duplicate_groups("phash", threshold)
    if as_json:
        print(json.dumps([[asdict(m) for m in group] for group in groups], indent=2))
        return
    for number, group in enumerate(groups, 1):
        _print_matches(f"group {number}: {len(group)} images", group)
    console.print(f"{len(groups)} groups of near-duplicates")


@app.command()
def stats(data_dir: DataDir = None) -> None:
    """Counts per engine and the store's size on disk."""
    with _open(_settings(data_dir)) as library:
        print(json.dumps(library.stats(), indent=2))


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000].")] = None,
) -> None:
    """Run the HTTP service (OpenAPI docs at /docs)."""
    import uvicorn

    from .api import create_app

    settings = _settings(data_dir, host=host, port=port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    console.print(f"lookalike: data in {settings.data_dir}, serving http://{settings.host}:{settings.port}/docs")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


def _print_matches(title: str, matches: list[Match]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("image_id", justify="right")
    by_matches = bool(matches) and matches[0].matches is not None
    table.add_column("matches" if by_matches else "distance", justify="right")
    table.add_column("file_name")
    for match in matches:
        table.add_row(str(match.image_id), f"{match.matches if by_matches else match.distance:g}", match.file_name)
    Console().print(table)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "", style="progress.data.speed")


def main() -> None:
    try:
        app()
    except LookalikeError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        sys.exit(1)
