"""What every benchmark script reports beside its figures: the machine, and the results as JSON."""

import json
import os
import platform
import statistics
import subprocess


def cpu_model() -> str:
    """The CPU's model name as `lscpu` gives it (the platform's processor string without lscpu)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Model name:")]
    return names[0] if names else platform.processor() or "unknown"


def machine(**versions: str) -> dict:
    """CPU model, core count, Python version, and the given library versions (`tensorflow=...`)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def write_results(results: dict, path: str | None) -> None:
    """Writes `results` to `path` as JSON (if given) and prints them as one JSON line."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results))


def spread(values, unit: str, digits: int) -> dict:
    """The median, min and max of repeated measurements, keyed `median_<unit>` (or `<unit>`), `min`, `max`."""
    return {
        unit: round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }
