"""The classical channel between two nodes: authentication, framing, replay refusal, compression."""
