"""How fastecho writes a socket address in messages: host:port, [v6]:port."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
