"""Prints the markdown table of shipped configs: trainable parameters and GMACs.

GMACs are counted analytically by `resnet.count_macs` at each config's default input size
(224x224 for ImageNet configs, 32x32 for cifar/).

    python benchmarks/configs_table.py
"""

from absl import app

import resnet


def main(argv):
    del argv
    print("| config | trainable params | GMACs | input |")
    print("|---|---:|---:|---|")
    for name in resnet.available_configs():
        size = 32 if name.startswith("cifar/") else 224
        model = resnet.build(name)
        params = sum(int(w.numpy().size) for w in model.trainable_weights)
        gmacs = resnet.count_macs(model, (size, size, 3)) / 1e9
        print(f"| `{name}` | {params:,} | {gmacs:.3f} | {size}x{size} |", flush=True)


if __name__ == "__main__":
    app.run(main)
