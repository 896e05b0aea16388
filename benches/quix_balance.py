"""The Quix Streams contestant of benches/kafka.rs: the balance per account, exactly once.

Reads bank entries ({"account", "seq", "amount", "ts"}, keyed by account) from --input,
keeps each account's balance in Quix's state store and writes one output per entry to
--output, keyed by the account: {"account", "balance", "seq", "ts"} (the entry's seq and
ts, which the bench uses to count outputs and measure latency). processing_guarantee is
"exactly-once": outputs, changelog and input offsets in one Kafka transaction per
checkpoint, every --commit-interval seconds. Runs until SIGTERM or SIGINT.

    python benches/quix_balance.py --brokers 127.0.0.1:9092 --input IN --output OUT \
        --group G --state-dir DIR [--commit-interval 0.1] [--fetch-wait-ms 10] \
        [--fetch-queue-backoff-ms 10]
"""

import argparse
import logging

from quixstreams import Application


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--commit-interval", type=float, default=0.1)
    p.add_argument("--fetch-wait-ms", type=int, default=10)
    p.add_argument("--fetch-queue-backoff-ms", type=int, default=10)
    a = p.parse_args()

    app = Application(
        broker_address=a.brokers,
        consumer_group=a.group,
        processing_guarantee="exactly-once",
        commit_interval=a.commit_interval,
        auto_offset_reset="earliest",
        state_dir=a.state_dir,
        loglevel=logging.WARNING,
        consumer_extra_config={
            "fetch.wait.max.ms": a.fetch_wait_ms,
            "fetch.queue.backoff.ms": a.fetch_queue_backoff_ms,
            # The test broker takes about half the session timeout to complete a
            # group's first join (DEVELOPERS.md); librdkafka's default is 45 s.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        },
    )
    entries = app.topic(a.input, key_deserializer="str", value_deserializer="json")
    balances = app.topic(a.output, key_serializer="str", value_serializer="json")

    def balance(entry, state):
        b = state.get("balance", 0) + entry["amount"]
        state.set("balance", b)
        return {
            "account": entry["account"],
            "balance": b,
            "seq": entry["seq"],
            "ts": entry["ts"],
        }

    sdf = app.dataframe(entries)
    sdf = sdf.apply(balance, stateful=True)
    sdf.to_topic(balances)
    app.run()


if __name__ == "__main__":
    main()
