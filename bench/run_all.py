"""Run every benchmark in turn and collect their Markdown output.

Each script runs as its own process (so thread settings and memory do not leak between them);
stdout goes to the terminal and, all together, to bench/results/benchmarks.md. Since timings on a
shared machine lie, each one is followed by a note of the CPU time other processes used meanwhile
(machine busy time from /proc/stat minus the benchmark's own, from getrusage) and of the steal time
(CPU the hypervisor gave to other guests).

Run: LOOKALIKE_TEST_PHOTOS=~/.cache/lookalike/photos .venv/bin/python bench/run_all.py [name ...]
(or `make bench`). Names select a subset, e.g. `bench/run_all.py search_latency`.
"""

import resource
import subprocess
import sys
import time

import common

BENCHMARKS = [
    "phash_throughput",
    "index_throughput",
    "search_latency",
    "copy_detection",
    "color_decode_size",
    # Local features, at their quick sizes (the full ones: --full, see docs/benchmarks.md).
    "local_crop_recall",
    "local_search_latency",
    "point_lookup",
    # Neural engines (global, image_text, tags); models exported once into LOOKALIKE_MODELS_DIR (else the
    # engines' default models dir). global_search_latency at its quick size (100k; --full adds 1M).
    "neural_throughput",
    "text_search_recall",
    "global_retrieval",
    "global_search_latency",
    # The text index (words, edits, sounds) at 100k images; uses Debian's wamerican word list if installed.
    "text_index",
]


def main() -> None:
    chosen = sys.argv[1:] or BENCHMARKS
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")
    sections = [f"# lookalike benchmarks\n\n{common.machine_markdown()}\n"]
    failed = []
    started_all = time.perf_counter()
    for name in chosen:
        print(f"\n<!-- {name}: other processes used {common.busy_cores():.2f} cores just before -->", flush=True)
        started, (busy, steal) = time.perf_counter(), common.cpu_ticks()
        own = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, str(common.BENCH_DIR / f"{name}.py")], stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
        other = common.cpu_ticks()[0] - busy - own_cpu
        stolen = common.cpu_ticks()[1] - steal
        note = (
            f"<!-- {name}: {seconds:.0f} s, exit {done.returncode}; meanwhile other processes used "
            f"{max(other, 0) / seconds:.2f} cores on average, steal {stolen / seconds:.2f} -->"
        )
        print(done.stdout, flush=True)
        print(note, flush=True)
        sections.append(done.stdout + "\n" + note + "\n")
        if done.returncode:
            failed.append(name)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = common.RESULTS_DIR / "benchmarks.md"
    output.write_text("\n".join(sections))
    print(f"\nall done in {time.perf_counter() - started_all:.0f} s; Markdown in {output}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
