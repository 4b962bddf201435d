"""``gandissect zoo``: list the downloadable generators (family, resolution, cached or not),
and optionally download (verify, cache) one of them."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_zoo(args: argparse.Namespace) -> int:
    from models import zoo

    if args.download:
        if args.download not in zoo.ZOO:
            raise ValueError(f"unknown zoo model {args.download!r}; zoo models: "
                             f"{', '.join(sorted(zoo.ZOO))}")
        path = zoo.resolve_weights(args.download, args.cache_dir, progress=not args.quiet)
        print(path)
        return 0
    rows: list[dict[str, Any]] = []
    for name, e in sorted(zoo.ZOO.items()):
        rows.append({"name": name, "family": e.family, "resolution": e.resolution,
                     "cached": zoo.is_cached(name, args.cache_dir), "url": e.url,
                     "sha256": e.sha256, "layers": list(e.layers), "licence": e.licence})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cache = args.cache_dir or zoo.default_cache_dir()
    print(f"{'name':22s} {'family':10s} {'res':>5s}  cached  layers")
    for r in rows:
        layers = f"{r['layers'][0]}..{r['layers'][-1]}"
        print(f"{r['name']:22s} {r['family']:10s} {r['resolution']:5d}  "
              f"{'yes' if r['cached'] else 'no':6s}  {layers}")
    print(f"cache: {cache}  (set $GANDISSECT_CACHE or --cache-dir to change)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` parser to ``subparsers``."""
    p = subparsers.add_parser(
        "zoo", help="list downloadable generators (ProGAN, StyleGAN2) and their cache state",
        description="List the model zoo: family, resolution, whether the weights are cached, "
                    "hookable layers. --download NAME fetches one (sha256-verified).")
    p.add_argument("--cache-dir", default=None,
                   help="weights cache (default: $GANDISSECT_CACHE or ~/.cache/gandissect)")
    p.add_argument("--download", metavar="NAME", default=None,
                   help="download and verify this zoo model's weights, print the path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON (with URLs and licences)")
    p.set_defaults(func=_cmd_zoo)
