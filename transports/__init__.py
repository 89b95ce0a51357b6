"""lanerpc's lanes: each module moves bytes between two processes and knows nothing of RPC.

The seam every lane implements is asyncio's own Protocol/Transport pair, narrowed down
(see :mod:`rpc.transports._seam`):

* a lane *connects* or *listens* and hands each connection to an ``asyncio.Protocol``
  made by the caller's factory (``connection_made``, ``data_received``,
  ``connection_lost``; ``pause_writing``/``resume_writing`` for backpressure);
* the protocol talks back through a transport with ``write``, ``writelines``,
  ``close``, ``abort``, ``is_closing`` and ``get_extra_info``;
* ``get_extra_info("lanerpc_peer")`` returns a :class:`PeerInfo`: the lane's name,
  the peer's address and, on local lanes, its credentials.
"""

from ._seam import PeerInfo, is_this_process, peer_credentials, peer_info

__all__ = ("PeerInfo", "is_this_process", "peer_credentials", "peer_info")
