"""`python -m resnet.pretrained`: lists the published weights, and checks a weights file by hand.

    python -m resnet.pretrained                     # the table: name, config, top-1, cached or not
    python -m resnet.pretrained check resnet50.tv2_in1k resnet50-11ad3fa6.pth

`check` compares the file's hash with its publisher's, then loads it into the weights' config
(strictly: every tensor used, every variable filled). Exit code 0 when both pass, 2 otherwise.
A file downloaded by hand (for a machine without the network) is checked this way before it is
copied to the path that `resnet.weights_info(name)["cache_path"]` gives.
"""

from __future__ import annotations

import os
import sys

from absl import app

from resnet import pretrained


def list_weights() -> None:
    print(f"{'name':30} {'config':18} {'top-1':>7}  cached")
    for name in pretrained.available_weights():
        info = pretrained.weights_info(name)
        top1 = f"{info['top1']:.2f}" if info["top1"] is not None else "-"
        print(f"{name:30} {info['config']:18} {top1:>7}  {'yes' if os.path.isfile(info['cache_path']) else 'no'}")


def check(name: str, path: str) -> None:
    import resnet

    info = pretrained.weights_info(name)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file.")
    mismatch = pretrained.verified(name, path)
    if mismatch is not None:
        raise ValueError(f"{path} is not the file of {name}: {mismatch}.")
    print(f"{path}: matches the publisher's hash {info['hash']}", flush=True)
    report = pretrained.load_weights(resnet.build(info["config"]), path)
    print(f"{report} Every variable of {info['config']!r} was filled: the file is good.", flush=True)


def main(argv: list[str]) -> None:
    args = argv[1:]
    try:
        if not args:
            list_weights()
        elif args[0] == "check" and len(args) == 3:
            check(args[1], args[2])
        else:
            raise ValueError("usage: python -m resnet.pretrained [check NAME FILE]")
    except ValueError as error:
        print(f"resnet.pretrained: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
