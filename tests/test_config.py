from __future__ import annotations

import pytest
from celery import Celery

import stemtrace
from stemtrace.capture.config import CaptureConfig


def test_keyword_options_win_over_environment_over_defaults() -> None:
    environ = {
        "STEMTRACE_BATCH_SIZE": "50",
        "STEMTRACE_STREAM": "env:stream",
        "STEMTRACE_SCRUB": "off",
        "STEMTRACE_SCRUB_KEYS": "iban, bic,",
    }
    config = CaptureConfig.build({"stream": "kw:stream"}, environ)
    assert config.stream == "kw:stream"
    assert config.batch_size == 50
    assert config.scrub is False
    assert config.scrub_keys == ("iban", "bic")
    assert config.flush_interval == CaptureConfig().flush_interval


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STEMTRACE_BATCH_SIZE": "many"}, "STEMTRACE_BATCH_SIZE='many' is invalid"),
        ({"STEMTRACE_SCRUB": "maybe"}, "STEMTRACE_SCRUB='maybe' is invalid"),
        ({"STEMTRACE_BUFFER_SIZE": "0"}, "buffer_size must be a positive integer"),
        ({"STEMTRACE_FLUSH_INTERVAL": "-1"}, "flush_interval must be a positive number"),
    ],
)
def test_bad_environment_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CaptureConfig.build({}, environ)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        CaptureConfig.build({"bufer_size": 3}, {})


def test_init_defaults_to_a_redis_or_rabbitmq_broker_and_refuses_others() -> None:
    for broker in ("redis://127.0.0.1:6379/3", "amqp://guest@127.0.0.1//"):
        app = Celery("a", broker=broker, set_as_current=False)
        capture = stemtrace.init(app)
        assert capture is not None and capture.transport_url == broker
        capture.publisher.close(0.1)
    other = Celery("b", broker="sqs://", set_as_current=False)
    with pytest.raises(ValueError, match="transport_url="):
        stemtrace.init(other)
    explicit = stemtrace.init(other, transport_url="memory://x")
    assert explicit is not None
    assert stemtrace.init(other, enabled=False) is None
