"""The cold-start section's reading of ``-X importtime``: self time per package, and what pulled it in."""

from __future__ import annotations

from bench.cold_start import paired_ratio, parse_importtime

# Shaped like CPython's output: a module is printed after what it imported, one level deeper.
IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       900 |        900 |   botocore
import time:       200 |        200 |     botocore.vendored.requests.exceptions
import time:      7000 |       7200 |   botocore.exceptions
import time:     60000 |      60000 |         botocore.session
import time:      1000 |       1000 |           urllib3.exceptions
import time:      3000 |       4000 |         urllib3
import time:      2000 |      66000 |       boto3.session
import time:      1000 |      67000 |     boto3
import time:       500 |      67500 |   shared.aws
import time:     40000 |     115600 | functions.users.app
"""


def test_self_time_is_summed_per_top_level_package() -> None:
    self_ms, _ = parse_importtime(IMPORTTIME)

    assert {name: round(ms, 3) for name, ms in self_ms.items()} == {
        "botocore": 68.1,
        "urllib3": 4.0,
        "boto3": 3.0,
        "shared": 0.5,
        "functions": 40.0,
    }


def test_a_package_is_named_with_the_importer_under_which_most_of_its_time_went() -> None:
    _, importers = parse_importtime(IMPORTTIME)

    # botocore.exceptions (7 ms) came straight from the function; botocore.session (60 ms) through boto3.
    assert importers["botocore"] == "boto3.session, from shared.aws"
    assert importers["urllib3"] == "boto3.session, from shared.aws"
    assert importers["boto3"] == "shared.aws"
    assert importers["shared"] == "functions.users.app"
    assert "functions" not in importers  # the module imported: nothing above it


def test_the_ratio_pairs_each_sample_with_the_baseline_sample_of_its_repetition() -> None:
    # The machine got three times slower during the second repetition, for both.
    samples, baseline = [110.0, 330.0, 120.0], [100.0, 300.0, 100.0]

    assert paired_ratio(samples, baseline) == 1.1  # 1.1, 1.1, 1.2; the ratio of medians would say 1.2
