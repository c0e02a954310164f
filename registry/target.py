"""Where the control plane lives: one Redis, a Sentinel-managed primary, or a Redis Cluster.

``RedisTarget`` is the one value every process builds from its ``Config`` and hands to the
``Registry``; nothing else looks at the deployment mode. In Sentinel and Cluster mode
``REDIS_URL`` still supplies the data nodes' ACL user, password, TLS (``rediss://``) and, for
Sentinel, the database number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse


if TYPE_CHECKING:
    from hubbub.config import Config


__all__ = ["CLUSTER", "SENTINEL", "SINGLE", "RedisTarget", "parse_host_port"]

SINGLE = "single"
SENTINEL = "sentinel"
CLUSTER = "cluster"


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to a pair.

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The Redis deployment of a cluster and how to authenticate to it.

    Args:
        url: the single Redis, or the credentials/TLS/db source in the other modes.
        sentinels: Sentinel addresses; non-empty selects Sentinel mode.
        master: the primary's name as the Sentinels know it.
        sentinel_password: password of the Sentinels (they may differ from the data nodes).
        cluster_nodes: startup nodes; non-empty selects Cluster mode.
        min_replicas: replicas a durable write waits for; -1 = 1 while the primary has one.
    """

    url: str = "redis://127.0.0.1:6379/0"
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "hubbub"
    sentinel_password: str = ""
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    min_replicas: int = -1

    @classmethod
    def from_config(cls, cfg: Config) -> RedisTarget:
        return cls(
            url=cfg.redis_url,
            sentinels=tuple(parse_host_port(s) for s in cfg.redis_sentinels),
            master=cfg.redis_sentinel_master,
            sentinel_password=cfg.redis_sentinel_password,
            cluster_nodes=tuple(parse_host_port(n) for n in cfg.redis_cluster_nodes),
            min_replicas=cfg.redis_min_replicas,
        )

    @property
    def mode(self) -> str:
        if self.cluster_nodes:
            return CLUSTER
        if self.sentinels:
            return SENTINEL
        return SINGLE

    def node_kwargs(self) -> dict[str, Any]:
        """Connection settings of the data nodes taken from ``url`` (user, password, TLS, db)."""
        u = urlparse(self.url)
        kwargs: dict[str, Any] = {}
        if u.username:
            kwargs["username"] = unquote(u.username)
        if u.password:
            kwargs["password"] = unquote(u.password)
        if u.scheme == "rediss":
            kwargs["ssl"] = True
        if self.mode == SENTINEL:
            path = u.path.strip("/")
            if path.isdigit():
                kwargs["db"] = int(path)
        return kwargs

    def describe(self) -> str:
        """One line naming the deployment, without secrets."""
        if self.mode == CLUSTER:
            return "cluster via " + ",".join(_addr(h, p) for h, p in self.cluster_nodes)
        if self.mode == SENTINEL:
            return (f"sentinel master {self.master!r} via "
                    + ",".join(_addr(h, p) for h, p in self.sentinels))
        u = urlparse(self.url)
        if u.scheme == "unix":
            return f"single {u.scheme}://{u.path}"
        host = u.hostname or "127.0.0.1"
        return f"single {u.scheme}://{_addr(host, u.port or 6379)}{u.path}"


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
