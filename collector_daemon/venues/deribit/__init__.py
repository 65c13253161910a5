"""Deribit API v2 (JSON-RPC 2.0 over WebSocket and HTTP): https://docs.deribit.com/"""
