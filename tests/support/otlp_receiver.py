"""A small OTLP/gRPC trace receiver for tests: keeps every exported span in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb


@dataclass
class ReceivedSpan:
    """One span as exported, with the service that sent it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    raw: bytes = field(repr=False, default=b"")


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """``TraceService/Export`` on a loopback port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests: list[bytes] = []
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=pb.ExportTraceServiceRequest.FromString,
                    response_serializer=pb.ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = 0

    async def start(self) -> int:
        """Listen on a free loopback port."""
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self.port

    async def stop(self) -> None:
        """Stop the server."""
        await self.server.stop(0)

    async def _export(
        self, request: pb.ExportTraceServiceRequest, context: Any
    ) -> pb.ExportTraceServiceResponse:
        self.requests.append(request.SerializeToString())
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            service = str(resource.get("service.name", ""))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            raw=span.SerializeToString(),
                        )
                    )
        return pb.ExportTraceServiceResponse()
