"""TF_CONFIG's "host:port" addresses are checked before any server starts (issue 14): a one-line DistributeError
naming the task type, index and address, where TensorFlow gave a traceback (port "abc") or silently listened on
another port (99999 binds 34463)."""

import json

import pytest

from tests.conftest import run_module
from trainers import distribute


def _tf_config(*workers, task_index=0):
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": task_index}})


@pytest.mark.parametrize(
    "address, expected",
    [
        ("localhost:abc", "= 'localhost:abc': port 'abc' is not an integer in 1..65535"),
        ("localhost:99999", "= 'localhost:99999': port '99999' is not an integer in 1..65535"),
        ("localhost:0", "port '0' is not an integer in 1..65535"),
        ("localhost:", "port '' is not an integer in 1..65535"),
        ("localhost:+2222", "port '+2222' is not an integer"),
        ("localhost:２２２２", "is not an integer"),  # full-width digits: str.isdigit() alone would take them
        (":2222", "= ':2222': expected \"host:port\""),
        ("no-port", "= 'no-port': expected \"host:port\""),
        ("local host:2222", "the host 'local host' contains white space"),
        ("::1:2222", "an IPv6 host goes in brackets, e.g. \"[::1]:2222\""),
        ("[::1]", "expected \"[IPv6 address]:port\""),
        ("[]:2222", "expected \"[IPv6 address]:port\""),
        ("[::1]:70000", "port '70000' is not an integer in 1..65535"),
        (2222, "TF_CONFIG cluster['worker'][1] is 2222; expected a \"host:port\" string"),
    ],
)
def test_bad_address_names_task_type_index_and_address(address, expected):
    with pytest.raises(distribute.DistributeError) as error:
        distribute.parse_tf_config(_tf_config("localhost:2222", address))
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert message.startswith("TF_CONFIG cluster['worker'][1]")  # the bad one, not this task's (worker 0)


def test_good_addresses_are_kept_as_given():
    addresses = ["localhost:2222", "10.0.0.7:65535", "[::1]:1", "[fe80::1%eth0]:2223", "worker-3.job.svc:2224"]
    spec = distribute.parse_tf_config(_tf_config(*addresses, task_index=2))
    assert spec.cluster == {"worker": addresses} and spec.task_name == "worker 2"


def test_a_long_address_is_cut_in_the_message():
    with pytest.raises(distribute.DistributeError) as error:
        distribute.parse_tf_config(_tf_config("h" * 5000 + ":x"))
    assert len(str(error.value)) < 250 and "..." in str(error.value)


def test_trainer_stops_on_a_bad_port_with_one_line_before_writing(tmp_path):
    """TensorFlow's InvalidArgumentError traceback ("Could not parse port") before."""
    result = run_module(
        "trainers.train", f"--model_dir={tmp_path / 'model'}",
        env={"TF_CONFIG": _tf_config("localhost:abc", "localhost:2223")}, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "TF_CONFIG cluster['worker'][0] = 'localhost:abc': port 'abc' is not an integer in 1..65535" in line
    assert len(line) < 250
    assert not (tmp_path / "model").exists()
