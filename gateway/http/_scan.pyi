# The head scanner (gateway/http/_scan.c); gateway/http/scan.py is its pure-Python twin.
INCOMPLETE: int
REFUSED: int

def scan_request(
    buf: bytes, pos: int, max_url: int, max_header_bytes: int, max_header_count: int
) -> tuple[int, str, bytes, list[tuple[bytes, bytes]], int] | int: ...
def scan_response(
    buf: bytes, pos: int, max_fields: int
) -> tuple[int, int, list[tuple[bytes, bytes]], int] | int: ...
