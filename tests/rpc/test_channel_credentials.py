"""A lanerpc Channel has no TLS: channel credentials given to it are refused, not dropped."""

from __future__ import annotations

import grpc
import pytest

import rpc


def test_channel_refuses_channel_credentials():
    with pytest.raises(ValueError, match="secure_channel"):
        rpc.Channel("127.0.0.1:1", credentials=grpc.ssl_channel_credentials())
