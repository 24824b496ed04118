"""Daemonless, reproducible, multi-arch OCI images of µMEC Trust (issue 12).

``scripts/build-images.sh`` and ``scripts/check-images.sh`` run this package's ``build`` and
``check`` modules. The pure parts (ELF header reader, wheel tags, Debian dependency closure,
lock file, reproducible tar and OCI layout writers) are tested in tests/umec/test_image_build.py;
the parts that download, compile and run images are run by hand (docs/benchmarks.md).
"""
