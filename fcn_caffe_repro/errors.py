"""One exception base for everything Caffe-shaped that can be wrong, each kind naming the place."""


class CaffeError(Exception):
    """Base of every error this package raises about Caffe files, nets or inputs."""


class PrototxtError(CaffeError, ValueError):
    """A protobuf text file that does not parse: names the file, line and column."""

    def __init__(self, message, file=None, line=None, col=None):
        self.file, self.line, self.col, self.reason = file, line, col, message
        where = f"{file or '<string>'}"
        if line is not None:
            where += f":{line}"
            if col is not None:
                where += f":{col}"
        super().__init__(f"{where}: {message}")


class CaffemodelError(CaffeError, ValueError):
    """A binary .caffemodel that cannot be read or does not fit the net: names file, byte offset, layer."""

    def __init__(self, message, file=None, offset=None, layer=None):
        self.file, self.offset, self.layer, self.reason = file, offset, layer, message
        parts = [str(file) if file is not None else "<bytes>"]
        if offset is not None:
            parts.append(f"byte {offset}")
        if layer is not None:
            parts.append(f"layer '{layer}'")
        super().__init__(f"{', '.join(parts)}: {message}")


class NetError(CaffeError, ValueError):
    """A net that cannot be built or run as asked: names the layer."""

    def __init__(self, message, layer=None):
        self.layer, self.reason = layer, message
        super().__init__(f"layer '{layer}': {message}" if layer is not None else message)
