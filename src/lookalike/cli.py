"""The `lookalike` command: a thin layer over `Library`, `indexer` and the HTTP app."""

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import catalog, indexer
from .config import Settings
from .duplicates import duplicate_groups
from .errors import LookalikeError, StorageFull
from .fusion import Evidence, Verdict
from .gateway import DESCRIBED_BY, ReverseSearch, TextSearch, reverse_search, text_search
from .indexes import Hit
from .library import Library

app = typer.Typer(help="Find duplicates, similar photos and more in a photo library.", no_args_is_help=True)
console = Console(stderr=True)
DataDir = Annotated[
    Path | None, typer.Option(help="Data directory [default: $LOOKALIKE_DATA_DIR or ~/.local/share/lookalike]")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(data_dir: Path | None, **overrides) -> Settings:
    values = {"data_dir": data_dir, **overrides}
    return Settings(**{key: value for key, value in values.items() if value is not None})


def _open(settings: Settings, prepare: bool = False) -> Library:
    library = Library.from_settings(settings)
    if prepare:  # before a progress bar starts: the first run exports the models, which takes a while
        try:
            with console.status("loading the models (the first run exports them to ONNX once)"):
                library.prepare()
        except BaseException:
            library.close()
            raise
    return library


@app.command()
def index(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to index, recursively.")],
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [default: all cores].")] = None,
    defer: Annotated[
        bool,
        typer.Option(
            help="Only the fast pass: leave the slow engines' features (local, text, captions) to the service, "
            "which makes them in the background (`lookalike serve`; GET /jobs shows how far it is)."
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Extract on a Ray cluster: its address (ray://host:10001, host:6379), 'auto' (the cluster "
            "this machine belongs to, or RAY_ADDRESS), or 'local' (a Ray instance of this machine). Needs "
            "lookalike[ray] on every node; the store is written here only.",
        ),
    ] = None,
) -> None:
    """Index every image under DIRECTORY; files already indexed and unchanged are skipped. The fast
    engines first, so the library answers their searches as soon as possible, then one pass per slow
    engine (local features, OCR text, captions), each resumed where it stopped when run again."""
    settings = _settings(data_dir)
    with (
        _open(settings, prepare=True) as library,
        Progress(
            TextColumn("{task.description:>18}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        tasks = []

        def start(stage: str, total: int) -> None:
            tasks.append(progress.add_task(stage, total=total))

        def done(job: indexer.Job, error: str | None) -> None:
            progress.advance(tasks[-1])

        try:
            report = indexer.run(library, directory, workers, start, done, settings.checkpoint_seconds, defer, ray)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: what was indexed is saved; run the same command to resume")
            raise typer.Exit(130) from None
        except StorageFull as exc:
            console.print(
                f"[red]error:[/] {exc.message}\nwhat was indexed before is saved; run the same command to resume"
            )
            raise typer.Exit(1) from None
        if library.due_for_training():
            with console.status("training the local features index (once; it keeps searches fast)"):
                library.maintain()
        backlog = {name: n for name, n in library.store.backlog().items() if n}
    for path, error in report.failed:  # soft wrap: a path stays whole, to be copied or grepped
        console.print(f"[yellow]skipped[/] {path}: {error}", soft_wrap=True)
    for path, image_id in report.taken:
        console.print(
            f"[yellow]left alone[/] {path}: the API added image {image_id} with this file name", soft_wrap=True
        )
    console.print(
        f"indexed {report.indexed}, unchanged {report.unchanged}, removed {report.removed} (gone from disk), "
        f"failed {len(report.failed)}, left alone {len(report.taken)} (added through the API)"
    )
    if report.failed:
        console.print("failed files were left out; fix or remove them and run index again to retry")
    if backlog:
        owed = ", ".join(f"{n} {name}" for name, n in backlog.items())
        console.print(
            f"owed to the background pass: {owed} (`lookalike serve` makes them; or index again without --defer)"
        )


@app.command()
def train(
    engine: Annotated[str, typer.Option(help="The engine whose index to train.")] = "local",
    whiten: Annotated[
        bool, typer.Option(help="Embeddings (global): learn PCA whitening from the library (1,000+ images).")
    ] = False,
    compressed: Annotated[
        bool | None,
        typer.Option(
            "--compressed/--exact",
            help="A compressed index (embeddings: IVF-PQ, 10,000+ images) or exact search "
            "[default: compressed for local features, exact for embeddings].",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """(Re)train an index now. Local features: its compressed index (`index` does this by itself as the
    library grows). Embeddings (global, image_text, tags): whitening and/or compression as asked; with
    neither, back to exact unwhitened search."""
    with _open(_settings(data_dir)) as library, console.status(f"training the {engine} index"):
        trained = library.train(engine, whiten, compressed)
    console.print(f"trained the {engine} index: {json.dumps(trained)}")


@app.command()
def search(
    image: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, show_default=False)] = None,
    text: Annotated[
        str | None,
        typer.Option(help="Find photos this text describes (image_text), names (tags) or shows (text) instead."),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="Engine name, or 'all': every engine, fused into one list (by image), or side by side.")
    ] = "all",
    k: Annotated[int, typer.Option("-k", min=1, help="Results (per engine, for one engine or a text).")] = 10,
    mirrored: Annotated[bool, typer.Option(help="Also find mirrored copies (local features).")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Find the stored images most like IMAGE, or those --text describes. An IMAGE asked of every engine
    gets one fused list, with a verdict: is it already here (exact, near_duplicate, copy), or only similar?"""
    if (image is None) == (text is None):
        raise typer.BadParameter("give an IMAGE or --text, not both")
    with _open(_settings(data_dir)) as library:
        if image is not None and engine == "all":
            found = reverse_search(library, image.read_bytes(), k)
            _print_fused(found, str(image), as_json)
            return
        if text is not None and engine == "all":
            _print_described(text_search(library, text, k), text, k, as_json)
            return
        if text is not None:
            found = {engine: library.similar_to_text(engine, text, k=k)}
            query = repr(text)
        else:
            found = {engine: library.similar_to_image(engine, image.read_bytes(), k=k, mirrored=mirrored)}
            query = str(image)
    if as_json:
        print(json.dumps({name: [hit.as_dict() for hit in hits] for name, hits in found.items()}, indent=2))
        return
    for name, matches in found.items():
        _print_hits(f"{name}: nearest to {query}", matches)


def _print_fused(found: ReverseSearch, query: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"verdict": found.verdict, "hits": [hit.as_dict() for hit in found.hits]}, indent=2))
        return
    out = Console(soft_wrap=True)  # a path is printed whole, never folded
    out.print(f"[bold]{query}[/]: {found.verdict.value.replace('_', ' ')}", highlight=False)
    for hit in found.hits:
        out.print(f"{hit.image_id:>8}  {hit.verdict.value:<14} {hit.score:7.1f}  {hit.file_name}", highlight=False)
        said = [f"{name} #{e.rank} ({_evidence_text(e)})" for name, e in hit.evidence.items()]
        out.print(f"{'':>34}[dim]{' · '.join(said)}[/]", highlight=False)


def _print_described(found: TextSearch, text: str, k: int, as_json: bool) -> None:
    lists = {name: [hit.as_dict() for hit in hits[:k]] for name, hits in found.found.items()}
    if as_json:
        print(json.dumps({"hits": [hit.as_dict() for hit in found.hits], "found": lists}, indent=2))
        return
    out = Console(soft_wrap=True)
    if found.hits:
        out.print(f"[bold]described by {text!r}[/]", highlight=False)
    for hit in found.hits:
        said = " · ".join(f"{name} {score:.3g}" for name, score in hit.engines.items())
        out.print(f"{hit.image_id:>8}  {hit.similarity:6.3f}  {hit.file_name}  [dim]{said}[/]", highlight=False)
    for name, hits in found.found.items():
        if name not in DESCRIBED_BY:
            _print_hits(f"{name}: {text!r}", hits[:k])


def _evidence_text(evidence: Evidence) -> str:
    said = f"{evidence.score:.3g} {evidence.measure.value}"
    return said if evidence.precise_matches is None else f"{said}, {evidence.precise_matches} precise"


@app.command()
def tags(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    data_dir: DataDir = None,
) -> None:
    """Print what IMAGE shows, as tags (ImageNet classes the classifier is confident of); stores nothing."""
    with _open(_settings(data_dir)) as library:
        print("\n".join(library.tags_of_image(image.read_bytes())))


@app.command()
def dupes(
    tier: Annotated[
        Verdict, typer.Option(help="The weakest tier to group by: exact, near_duplicate, copy or similar.")
    ] = Verdict.NEAR_DUPLICATE,
    threshold: Annotated[
        float | None, typer.Option(help="Largest Hamming distance of a near-duplicate's hash [default: 64].")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """List every group of duplicates in the library, each pair with its tier: a group's every pair is
    within its tier, so a burst of similar shots shows as `similar`, never as a duplicate."""
    if tier is Verdict.NONE:
        raise typer.BadParameter("tier none groups nothing")
    with _open(_settings(data_dir)) as library:
        groups = duplicate_groups(library, tier, threshold)
    if as_json:
        print(json.dumps([group.as_dict() for group in groups], indent=2))
        return
    out = Console(soft_wrap=True)  # a path is printed whole, never folded
    for number, group in enumerate(groups, 1):
        out.print(f"[bold]group {number}[/]: {len(group.image_ids)} images, {group.tier.value}", highlight=False)
        for image_id, name in zip(group.image_ids, group.file_names):
            out.print(f"{image_id:>8}  {name}", highlight=False)
        for pair in group.pairs:
            distances = ", ".join(f"{engine} {d:.3g}" for engine, d in pair.scores.items())
            if pair.precise_matches is not None:
                distances += f", local {pair.precise_matches} precise matches"
            out.print(f"{'':>4}[dim]{pair.first} ~ {pair.second}: {pair.tier.value} ({distances})[/]", highlight=False)
    console.print(f"{len(groups)} groups, {tier.value} or closer")


@app.command()
def stats(data_dir: DataDir = None) -> None:
    """Counts per engine and the store's size on disk."""
    with _open(_settings(data_dir)) as library:
        print(json.dumps(catalog.stats(library), indent=2))


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000].")] = None,
    insecure: Annotated[
        bool, typer.Option(help="Listen beyond loopback without an API key (a proxy in front guards it).")
    ] = False,
) -> None:
    """Run the HTTP service (OpenAPI docs at /docs). Beyond loopback it needs LOOKALIKE_API_KEY."""
    import uvicorn

    from .service import create_app

    settings = _settings(data_dir, host=host, port=port, insecure=insecure or None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    app = create_app(settings, _open(settings, prepare=True))  # a model that cannot load stops here, saying why
    console.print(f"lookalike: data in {settings.data_dir}, serving http://{settings.host}:{settings.port}/docs")
    uvicorn.run(app, host=settings.host, port=settings.port)


models = typer.Typer(help="Models whose files are downloaded on first use: list them, install them from a folder.")
app.add_typer(models, name="models")


@models.command("list")
def list_models(data_dir: DataDir = None) -> None:
    """Each downloaded model's files, and whether they are installed."""
    from .models.registry import MODELS, installed

    models_dir = _settings(data_dir).models_dir
    table = Table(title=f"models in {models_dir}", title_justify="left")
    for column in ("model", "file", "bytes", "installed"):
        table.add_column(column)
    for name, files in MODELS.items():
        for weights in files:
            size = f"{weights.size:,}" if weights.size else "?"
            table.add_row(name, weights.filename, size, "yes" if installed(weights, models_dir) else "no")
            name = ""
    Console().print(table)


@models.command("install")
def install_model(
    name: Annotated[str, typer.Argument(help="The model, as `lookalike models list` names it.")],
    folder: Annotated[Path, typer.Option("--from", help="A folder holding the model's files, as downloaded.")],
    data_dir: DataDir = None,
) -> None:
    """Install a model's files from a folder (copied from a machine that could download them), each
    checked against its sha256: for a server that cannot download them itself."""
    from .models import registry

    models_dir = _settings(data_dir).models_dir
    for path in registry.install_model(name, folder, models_dir):
        console.print(f"installed {path}")
    console.print(f"{name}: every file in {models_dir}")


def _print_hits(title: str, hits: list[Hit]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("image_id", justify="right")
    table.add_column(hits[0].measure.value if hits else "score", justify="right")
    table.add_column("file_name")
    for hit in hits:
        table.add_row(str(hit.image_id), f"{hit.score:g}", hit.file_name)
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
