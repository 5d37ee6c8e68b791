"""What the Python bench scripts share: the repository root, free loopback ports, and an Apache Kafka started by
scripts/kafka.sh in a directory of the bench's own."""

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"nothing listens on {port}")


def start_kafka(directory):
    """Start a one-node Apache Kafka in `directory`; returns its bootstrap list."""
    return subprocess.run([f"{ROOT}/scripts/kafka.sh", "start", directory], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def stop_kafka(directory):
    subprocess.run([f"{ROOT}/scripts/kafka.sh", "stop", directory], capture_output=True)
