"""``tools/dev release``: cut, check and record releases of the monorepo's distributions.

See ``tools/README.md`` ("Releases") for the procedure; the compatibility suite in
``tests-integration/test_compat.py`` reads what this records.
"""

from amora_devtools.release._artefacts import check_artefacts, check_sdist, check_wheel
from amora_devtools.release._changelog import add_unreleased_entry, move_unreleased, unreleased_entries
from amora_devtools.release._errors import ReleaseError
from amora_devtools.release._project import Distribution, compatible_range, distributions, find, required_range
from amora_devtools.release._record import RECORD_FILE, Release, latest, read_releases
from amora_devtools.release._release import BUMPS, Artefacts, Cut, build_and_check, cut_release
from amora_devtools.release._sbom import sbom_from_lock, validate_sbom

__all__ = [
    "BUMPS",
    "RECORD_FILE",
    "Artefacts",
    "Cut",
    "Distribution",
    "Release",
    "ReleaseError",
    "add_unreleased_entry",
    "build_and_check",
    "check_artefacts",
    "check_sdist",
    "check_wheel",
    "compatible_range",
    "cut_release",
    "distributions",
    "find",
    "latest",
    "move_unreleased",
    "read_releases",
    "required_range",
    "sbom_from_lock",
    "unreleased_entries",
    "validate_sbom",
]
