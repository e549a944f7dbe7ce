"""MQTT output against a real mosquitto: documents, retained state/status, last will, outage."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from mqtt_fixtures import mosquitto_fixture  # noqa: F401 - the "mosquitto" fixture

from realtime_erc.events import StatusEvent, utc_timestamp
from realtime_erc.outputs.mqtt import (
    BrokerAddress,
    MqttOptions,
    MqttPublisher,
    MqttSubscriber,
    make_client,
)
from realtime_erc.outputs.publisher import OutputError, PublishStage
from realtime_erc.outputs.schema import validate_document
from realtime_erc.outputs.topics import topic_for

FAST = MqttOptions(reconnect_min_s=0.05, reconnect_max_s=0.3, close_timeout_s=5)


def fast(url: str) -> MqttOptions:
    return FAST.with_values({"url": url})


def emotion(i: int, speaker: str = "A", provisional: bool = False, session: str = "s1") -> dict:
    scores = {"neutral": 0.1, "joy": 0.9} if not provisional else {"neutral": 0.6, "joy": 0.4}
    return {
        "schema": "erc.emotion/1",
        "session_id": session,
        "utterance_id": i,
        "speaker": speaker,
        "start": float(i),
        "end": i + 0.8,
        "text": "" if provisional else f"utterance {i}",
        "label": max(scores, key=scores.get),
        "scores": scores,
        "label_set": "meld7",
        "modalities": {"text": not provisional, "audio": True, "visual": False},
        "provisional": provisional,
        "model": "test@1",
        "latency_ms": {"total": 12.5},
        "emitted_at": utc_timestamp(),
    }


def status(state: str, session: str = "s1") -> dict:
    return StatusEvent(
        session_id=session, state=state, model="test@1", label_set="meld7", at=utc_timestamp()
    ).to_document()


async def retained(url: str, topic_filter: str, wait_s: float = 1.0) -> dict[str, bytes]:
    """Every retained message under ``topic_filter`` right now (topic → payload)."""
    found: dict[str, bytes] = {}
    client = make_client(BrokerAddress.parse(url), MqttOptions())
    async with client:
        await client.subscribe(topic_filter, qos=1)
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    if message.retain:
                        found[str(message.topic)] = bytes(message.payload)
        except TimeoutError:
            pass
    return found


async def collect_until_offline(sub: MqttSubscriber, timeout: float = 20) -> list:
    got = []
    async with asyncio.timeout(timeout):
        async for topic, doc in sub:
            got.append((topic, doc))
            if doc.get("schema") == "erc.status/1" and doc["state"] == "offline":
                return got
    return got


async def test_every_document_type_reaches_a_subscriber_valid(mosquitto):
    async with MqttSubscriber(mosquitto.url, include_state=True) as sub:
        pub = MqttPublisher(fast(mosquitto.url), "s1", "meld7", "test@1")
        await pub.start()
        sent = [status("online"), emotion(0, provisional=True), emotion(0), emotion(1, "B")]
        sent.append(status("offline"))
        for doc in sent:
            await pub.publish(topic_for("erc", doc), doc)
        got = await collect_until_offline(sub)
        await pub.close()
    for _, doc in got:
        validate_document(doc)
    topics = [t for t, _ in got]
    assert topics == [
        "erc/s1/status",
        "erc/s1/A/emotion",
        "erc/s1/A/emotion",
        "erc/s1/A/state",
        "erc/s1/B/emotion",
        "erc/s1/B/state",
        "erc/s1/status",
    ]
    docs = [d for _, d in got]
    assert docs[1]["provisional"] and not docs[2]["provisional"]
    assert docs[3] == sent[2]  # state = the final document, not the provisional one
    assert [d["state"] for d in docs if d["schema"] == "erc.status/1"] == ["online", "offline"]


async def test_retained_state_while_running_and_cleared_on_exit(mosquitto):
    pub = MqttPublisher(fast(mosquitto.url), "lab/1", "meld7", "test@1")
    await pub.start()
    for doc in [status("online", "lab/1"), emotion(0, "A/x", session="lab/1")]:
        await pub.publish(topic_for("erc", doc), doc)
    await pub.publish(
        topic_for("erc", emotion(1, "B", session="lab/1")), emotion(1, "B", session="lab/1")
    )
    while pub.pending:
        await asyncio.sleep(0.01)
    during = await retained(mosquitto.url, "erc/#")
    # sanitised ids in topics, raw ids in payloads
    assert set(during) == {"erc/lab_1/status", "erc/lab_1/A_x/state", "erc/lab_1/B/state"}
    assert json.loads(during["erc/lab_1/A_x/state"])["speaker"] == "A/x"
    assert json.loads(during["erc/lab_1/status"])["state"] == "online"

    await pub.publish(topic_for("erc", status("offline", "lab/1")), status("offline", "lab/1"))
    await pub.close()
    after = await retained(mosquitto.url, "erc/#")
    assert set(after) == {"erc/lab_1/status"}  # states cleared
    assert json.loads(after["erc/lab_1/status"])["state"] == "offline"


PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from realtime_erc.events import StatusEvent, utc_timestamp
    from realtime_erc.outputs.mqtt import MqttPublisher
    async def main():
        pub = MqttPublisher(sys.argv[1], "crashy", "meld7")
        await pub.start()
        doc = StatusEvent(session_id="crashy", state="online", model=None, label_set="meld7",
                          at=utc_timestamp()).to_document()
        await pub.publish("erc/crashy/status", doc)
        while pub.pending:
            await asyncio.sleep(0.01)
        print("online", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_last_will_says_lost_when_the_publisher_dies(mosquitto):
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_SCRIPT, mosquitto.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == "online"
        assert (
            json.loads((await retained(mosquitto.url, "erc/+/status"))["erc/crashy/status"])[
                "state"
            ]
            == "online"
        )
        proc.kill()  # no DISCONNECT: the broker publishes the will
        proc.wait()
        for _ in range(50):
            status_now = json.loads(
                (await retained(mosquitto.url, "erc/+/status", 0.2))["erc/crashy/status"]
            )
            if status_now["state"] == "lost":
                break
        validate_document(status_now)
        assert status_now["state"] == "lost"
        assert status_now["session_id"] == "crashy"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_broker_outage_loses_nothing_and_keeps_order(mosquitto):
    """The broker is stopped mid-session and restarted: events produced meanwhile are buffered
    and delivered in order. The subscriber keeps a persistent session (QoS 1), so the broker
    queues for it what arrives before it has reconnected."""
    sub = MqttSubscriber(fast(mosquitto.url), client_id="outage-sub", persistent=True)
    await sub.open()
    pub = MqttPublisher(fast(mosquitto.url), "s1", "meld7", "test@1")
    await pub.start()
    collector = asyncio.create_task(collect_until_offline(sub, timeout=60))
    await pub.publish("erc/s1/status", status("online"))
    n = 120
    for i in range(n):
        doc = emotion(i, "AB"[i % 2])
        await pub.publish(topic_for("erc", doc), doc)
        if i == 40:
            mosquitto.stop()
        if i == 90:
            assert pub.pending > 0  # buffered while the broker was down
            mosquitto.start()
        await asyncio.sleep(0.01)
    await pub.publish("erc/s1/status", status("offline"))
    got = await collector
    await pub.close()
    await sub.close()
    ids = [d["utterance_id"] for _, d in got if d["schema"] == "erc.emotion/1"]
    # QoS 1 is at-least-once: a message whose PUBACK was lost is sent again; keep first copies
    assert list(dict.fromkeys(ids)) == list(range(n))
    assert pub.reconnects >= 1 and sub.reconnects >= 1
    assert pub.dropped == 0


async def test_buffer_is_bounded_while_the_broker_is_down(mosquitto):
    pub = MqttPublisher(
        MqttOptions(url=mosquitto.url, buffer_size=5, reconnect_min_s=5, close_timeout_s=0.2),
        "s1",
        "meld7",
    )
    await pub.start()
    mosquitto.stop()
    for _ in range(100):  # wait until the publisher noticed
        if not pub._connected:
            break
        await asyncio.sleep(0.02)
    for i in range(12):
        await pub.publish(topic_for("erc", emotion(i)), emotion(i, provisional=True))
    assert pub.pending == 5
    assert pub.dropped == 7
    await pub.close()


async def test_unreachable_broker_is_one_clear_error(free_port):
    pub = MqttPublisher(f"mqtt://127.0.0.1:{free_port}", "s1", "meld7")
    with pytest.raises(OutputError, match=r"cannot reach the MQTT broker at mqtt://127.0.0.1"):
        await pub.start()


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:1883", "mqtt://", "mqtt://h:notaport"])
def test_bad_url_names_the_form(url):
    with pytest.raises(OutputError, match="mqtt://HOST:PORT"):
        BrokerAddress.parse(url)


def test_url_defaults():
    assert BrokerAddress.parse("mqtt://broker") == BrokerAddress("broker", 1883, False)
    assert BrokerAddress.parse("mqtts://broker") == BrokerAddress("broker", 8883, True)


async def test_publish_stage_over_mqtt_with_credentials(mosquitto, tmp_path):
    """The real publish stage + MQTT, against a broker that requires a password."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "erc", "s3cret"], check=True)
    conf = mosquitto.config_path.read_text().replace(
        "allow_anonymous true", f"allow_anonymous false\npassword_file {passwd}"
    )
    mosquitto.stop()
    mosquitto.config_path.write_text(conf)
    mosquitto.start()

    with pytest.raises(OutputError, match="refused the login"):
        await MqttPublisher(mosquitto.url, "s1", "meld7").start()

    creds = MqttOptions(url=mosquitto.url, username="erc", password="s3cret")
    sub = MqttSubscriber(creds)
    await sub.open()
    stage = PublishStage("s1", "meld7", None, [MqttPublisher(creds, "s1", "meld7")])
    await stage.start()
    await stage.close()
    got = await collect_until_offline(sub, timeout=10)
    await sub.close()
    assert [d["state"] for _, d in got] == ["online", "offline"]


@pytest.mark.slow
async def test_cli_watch_over_mqtt(mosquitto, tmp_path):
    out = tmp_path / "watched.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "realtime_erc", "watch", "--mqtt", mosquitto.url,
        "--until-offline", "--jsonl", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    pub = MqttPublisher(fast(mosquitto.url), "w1", "meld7", "test@1")
    await pub.start()
    await pub.publish(topic_for("erc", status("online", "w1")), status("online", "w1"))
    # the retained "online" reaches the watcher as soon as it has subscribed
    first = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert b"w1" in first and b"online" in first
    for doc in [emotion(0, session="w1"), status("offline", "w1")]:
        await pub.publish(topic_for("erc", doc), doc)
    await pub.close()
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert '"utterance 0"' in stdout.decode() and "offline" in stdout.decode()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d.get("state", d.get("utterance_id")) for d in lines] == ["online", 0, "offline"]


def test_cli_unreachable_broker_is_one_line(run_cli, free_port, demo_dir):
    result = run_cli(
        "replay", str(demo_dir), "--no-zmq", "--mqtt", f"mqtt://127.0.0.1:{free_port}", "-q"
    )
    assert result.returncode == 2
    assert "cannot reach the MQTT broker" in result.stderr and "Traceback" not in result.stderr
