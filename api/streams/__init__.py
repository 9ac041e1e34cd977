"""Event streams to clients: the per-process hub, the stream session shared by every transport, the WebSocket
wire, and Conveyor's native WebSocket protocol for uvicorn."""
