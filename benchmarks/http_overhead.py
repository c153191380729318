"""Client overhead of ``HTTPBackend`` per request, against raw httpx to the same server.

    .venv/bin/python benchmarks/http_overhead.py [--requests 400] [--concurrency 8] [--repeats 3]

Why: synthetic-data stages send hundreds of thousands of requests; the client must
cost far less than the server (goal: < 1 ms per request). The server is
phiforge's scripted OpenAI-compatible server on 127.0.0.1 (answers instantly, HTTP/1.1
keep-alive), so what differs between the two sides is only the client:

* ``raw``: httpx directly, the least a Python client can do: a persistent
  ``httpx.Client`` posting and parsing JSON in a loop (sequential), the same with
  ``httpx.AsyncClient`` (async sequential: what our transport costs by itself), and
  ``httpx.AsyncClient`` + ``asyncio.gather`` under a semaphore (concurrent).
* ``phiforge``: ``HTTPBackend.sample`` building the payloads, retry wrapper, usage
  accounting, parsing into ``Completion``s; one call per request (sequential) and one
  call for all requests (concurrent); with and without the SQLite request cache,
  and a rerun answered entirely from the cache.

Overhead = (phiforge - raw) / requests, medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from phiforge.backends.base import SamplingParams
from phiforge.backends.http import HTTPBackend
from phiforge.testing.http import ScriptedOpenAIServer
from phiforge.testing.load import OtherLoad

RESULTS = Path(__file__).resolve().parent / "results" / "http_overhead.json"
PARAMS = SamplingParams(max_tokens=8, temperature=1.0, seed=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def payload(i: int) -> dict:
    return {"model": "m", "prompt": f"prompt {i}", "max_tokens": 8, "temperature": 1.0, "seed": 0, "n": 1,
            "logprobs": 1, "return_tokens_as_token_ids": True}


def raw_sequential(url: str, n: int) -> None:
    with httpx.Client() as client:
        for i in range(n):
            client.post(url + "/v1/completions", json=payload(i)).json()


def raw_async_sequential(url: str, n: int) -> None:
    async def go():
        async with httpx.AsyncClient() as client:
            for i in range(n):
                (await client.post(url + "/v1/completions", json=payload(i))).json()
    asyncio.run(go())


def raw_concurrent(url: str, n: int, concurrency: int) -> None:
    async def go():
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
            async def one(i):
                async with sem:
                    return (await client.post(url + "/v1/completions", json=payload(i))).json()
            await asyncio.gather(*(one(i) for i in range(n)))
    asyncio.run(go())


def ours_sequential(be: HTTPBackend, n: int) -> None:
    for i in range(n):
        be.sample([f"prompt {i}"], PARAMS)


def ours_concurrent(be: HTTPBackend, n: int) -> None:
    be.sample([f"prompt {i}" for i in range(n)], PARAMS)


def median_time(fn, repeats: int) -> tuple[float, float | None]:
    times, loads = [], []
    fn()  # warm-up (connections, imports)
    for _ in range(repeats):
        with OtherLoad() as load:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        loads.append(load.cores)
    return statistics.median(times), max((c for c in loads if c is not None), default=None)


def measure(url: str, args) -> dict:
    n, c = args.requests, args.concurrency
    tmp = Path(tempfile.mkdtemp(prefix="phiforge-bench-"))
    plain = HTTPBackend(url, "m", profile="vllm", concurrency=c)
    runs = {
        "raw_sequential": lambda: raw_sequential(url, n),
        "raw_async_sequential": lambda: raw_async_sequential(url, n),
        "ours_sequential": lambda: ours_sequential(plain, n),
        "raw_concurrent": lambda: raw_concurrent(url, n, c),
        "ours_concurrent": lambda: ours_concurrent(plain, n),
        # a fresh cache file per run: every request misses and is written
        "ours_concurrent_cache_write": lambda: ours_concurrent(
            HTTPBackend(url, "m", profile="vllm", concurrency=c, cache_path=tmp / f"{time.time_ns()}.sqlite"), n),
    }
    cached = HTTPBackend(url, "m", profile="vllm", concurrency=c, cache_path=tmp / "warm.sqlite")
    ours_concurrent(cached, n)
    runs["ours_concurrent_cache_hits"] = lambda: ours_concurrent(cached, n)
    out = {}
    for name, fn in runs.items():
        seconds, load = median_time(fn, args.repeats)
        out[name] = {"seconds": seconds, "ms_per_request": 1000 * seconds / n, "other_cores": load}
    plain.close()
    cached.close()
    for mode in ("sequential", "concurrent"):
        raw, ours = out[f"raw_{mode}"], out[f"ours_{mode}"]
        out[f"overhead_ms_{mode}"] = ours["ms_per_request"] - raw["ms_per_request"]
        out[f"ratio_{mode}"] = ours["seconds"] / raw["seconds"]
    out["overhead_ms_sequential_vs_async"] = (out["ours_sequential"]["ms_per_request"]
                                             - out["raw_async_sequential"]["ms_per_request"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    with ScriptedOpenAIServer() as srv:
        res = measure(srv.url, args)
    print(f"{args.requests} requests to a local scripted server, concurrency {args.concurrency} "
          f"(median of {args.repeats}):")
    for name in ("raw_sequential", "raw_async_sequential", "ours_sequential", "raw_concurrent", "ours_concurrent",
                 "ours_concurrent_cache_write", "ours_concurrent_cache_hits"):
        print(f"  {name:<28} {res[name]['ms_per_request']:7.3f} ms/request")
    for mode in ("sequential", "concurrent"):
        print(f"client overhead ({mode}): {res[f'overhead_ms_{mode}']:+.3f} ms/request "
              f"(phiforge / raw = {res[f'ratio_{mode}']:.2f}x)")
    print(f"client overhead (sequential, vs raw async httpx): {res['overhead_ms_sequential_vs_async']:+.3f} "
          "ms/request (our code alone; async httpx itself costs the rest)")
    busy = max((v["other_cores"] or 0) for k, v in res.items() if isinstance(v, dict))
    if busy > 0.1:
        print(f"WARNING: other processes used up to {busy:.2f} CPU cores meanwhile; rerun on a quiet machine")
    result = {"requests": args.requests, "concurrency": args.concurrency, "repeats": args.repeats,
              "httpx": httpx.__version__, "python": platform.python_version(), "other_cores_max": busy, **res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
