"""The loom bridge: routes events, requests and tool calls between agents."""
