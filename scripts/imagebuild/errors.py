"""The image build's checked errors: what failed, with the offending value, and what to do."""

from __future__ import annotations

from kernel.errors import CheckedError


class ImageBuildError(CheckedError):
    """A build or check step failed; the build stops (fail closed, no partial image)."""

    check = "image.build"
    hint = "Read the detail; rerun scripts/build-images.sh once it is fixed."
    public = False


class LockInvalid(ImageBuildError):
    check = "image.lock.invalid"
    hint = "Fix the lock file or rebuild it with scripts/build-images.sh --update-lock."


class InputHashMismatch(ImageBuildError):
    check = "image.lock.hash"
    hint = ("A downloaded input differs from the one the lock pins: the mirror changed or the "
            "download was tampered with. Do not use it; --update-lock only after review.")


class ElfInvalid(ImageBuildError):
    check = "image.elf.invalid"
    hint = "A file starts like ELF but its header is unreadable; look at it."


class WrongArchitecture(ImageBuildError):
    check = "image.arch"
    hint = "A file or wheel for another architecture got into the image; check the lock."


class StepFailed(ImageBuildError):
    check = "image.step"


class PathEscapes(ImageBuildError):
    check = "image.path.escape"
    hint = ("A package member or symlink points outside the image's root file system (or is a "
            "kind of file images do not hold); look at the package before building with it.")


class LockChanged(ImageBuildError):
    check = "image.lock.changed"
    hint = ("The build resolved inputs the lock does not pin; review them, then rerun with "
            "--update-lock to pin them.")
