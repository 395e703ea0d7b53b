"""Files on any file system TensorFlow opens, replaced whole, and paths owned by a live process.

* `resnet.storage.files`: paths that may be URIs, whole-file reads and atomic replacement, and
  recognizing a full disk in an error.
* `resnet.storage.owners`: who (host, process, start) holds a lock file or a working directory,
  and when the holder counts as gone, so what it left may be taken over or removed.

Training (the run directory) and export (its staging directories) build on both.
"""
