"""``realtime-erc serve``: many conversations streamed in over WebSockets, models shared."""
