"""CPython's `contextvars`, measured the way benches/benches/context.rs measures the Rust crate.

Prints one JSON object: figure name -> {"median_ns", "min_ns", "raw_median_ns"}, plus memory
figures. Standard library only (Python 3.11).

Method: `timeit` with enough loops per repeat that one repeat takes about 1 ms, 301 repeats
(short repeats, so that on a shared machine many of them run undisturbed). `min_ns` is the
fastest repeat's time per loop, `median_ns` the median, as `scripts/bench-report` takes from
criterion. From each we subtract the same figure for an empty statement (`pass`), so they are
the operation itself, not the interpreter's `for` loop: that makes CPython look faster and the
ratios against it conservative. `raw_median_ns` keeps the median before the subtraction.

Usage:
    python3 bench_contextvars.py [--quick]   # timings and memory, as JSON
    python3 bench_contextvars.py --list      # the operations
    python3 bench_contextvars.py OP N        # run OP N times (for counting instructions)
"""

import contextvars
import json
import statistics
import sys
import timeit
import tracemalloc

REPEATS = 301
TARGET_SECONDS = 0.001


def context_with(n):
    """A context with `n` variables set, `request_id` (to 7) among them, and that variable."""
    request_id = contextvars.ContextVar("request_id")
    fillers = [contextvars.ContextVar(f"filler{i}") for i in range(n - 1)]

    def fill():
        request_id.set(7)
        for value, var in enumerate(fillers):
            var.set(value)

    ctx = contextvars.Context()
    ctx.run(fill)
    assert len(ctx) == n
    return ctx, request_id


def measure(stmt, namespace, repeats):
    """Median and minimum time per loop of `stmt`, in nanoseconds."""
    timer = timeit.Timer(stmt, globals=namespace)
    number, elapsed = timer.autorange()
    # autorange aims at 0.2 s; scale down to about TARGET_SECONDS per repeat.
    number = max(1, int(number * TARGET_SECONDS / elapsed))
    per_loop = [t / number * 1e9 for t in timer.repeat(repeat=repeats, number=number)]
    return statistics.median(per_loop), min(per_loop)


def operations():
    """Operation name -> (statement, namespace, context to run it in or None)."""

    def empty():
        pass

    ops = {"pass": ("pass", {}, None)}
    for n in (8, 1000):
        ctx, var = context_with(n)
        namespace = {"var": var, "copy_context": contextvars.copy_context, "empty": empty}
        ops[f"get/{n}"] = ("var.get()", namespace, ctx)
        ops[f"copy_context/{n}"] = ("copy_context()", namespace, ctx)
        if n == 8:
            ops["set_reset"] = ("var.reset(var.set(8))", namespace, ctx)
            ops["copy_context_run"] = ("copy_context().run(empty)", namespace, ctx)
            # `Context.run` enters the context, so it is called from outside it.
            ops["run"] = ("ctx.run(empty)", {"ctx": ctx, "empty": empty}, None)
    return ops


def run_op(name, number):
    """Runs operation `name` `number` times, nothing else: for callgrind."""
    stmt, namespace, ctx = operations()[name]
    timer = timeit.Timer(stmt, globals=namespace)
    if ctx is None:
        timer.timeit(number)
    else:
        ctx.run(timer.timeit, number)


def main():
    if "--list" in sys.argv:
        print("\n".join(operations()))
        return
    if len(sys.argv) == 3 and sys.argv[1] in operations():
        run_op(sys.argv[1], int(sys.argv[2]))
        return
    repeats = 5 if "--quick" in sys.argv else REPEATS
    results = {}
    baseline, baseline_min = measure("pass", {}, repeats)

    def record(name, stmt, namespace):
        median, minimum = measure(stmt, namespace, repeats)
        results[name] = {
            "median_ns": median - baseline,
            "min_ns": minimum - baseline_min,
            "raw_median_ns": median,
        }

    for name, (stmt, namespace, ctx) in operations().items():
        if name == "pass":
            continue
        if ctx is None:
            record(name, stmt, namespace)
        else:
            ctx.run(record, name, stmt, namespace)

    # Heap bytes a context holds per variable set (tracemalloc counts Python's allocator).
    for n in (8, 1000):
        variables = [contextvars.ContextVar(f"v{i}") for i in range(n)]
        values = list(range(1000, 1000 + n))  # made before counting: only the mapping counts

        def fill():
            for var, value in zip(variables, values):
                var.set(value)

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        ctx = contextvars.Context()
        ctx.run(fill)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(ctx) == n
        results[f"bytes_per_var/{n}"] = {"value": (after - before) / n, "unit": "bytes"}

    results["_meta"] = {
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "empty_loop_ns": baseline,
        "repeats": repeats,
        "statistic": "min and median of repeats",
    }
    json.dump(results, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
