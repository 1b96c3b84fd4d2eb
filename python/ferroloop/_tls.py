"""TLS transports: the Python half of ferroloop's TLS layer.

The TLS state machine is Rust (``TlsCore``, the raw transport's protocol); what is
here is what is Python by nature: making the ``SSLObject`` from the user's
``ssl.SSLContext`` (``context.wrap_bio`` over two ``MemoryBIO``s, so every setting
of the context applies as configured), asyncio's argument checks, and
``_SSLTransport``, the ``asyncio.Transport`` the application sees, whose methods
are the core's, bound into slots on first use (as ``_StreamTransport`` does)."""

import warnings

from asyncio import constants, transports

from ._ferroloop import TlsCore

try:
    import ssl
except ImportError:  # pragma: no cover - CPython built without OpenSSL
    ssl = None

_TLS_METHODS = (
    'write', 'writelines', 'abort', 'is_closing', 'is_reading',
    'pause_reading', 'resume_reading', 'get_protocol', 'set_protocol',
    'get_extra_info', 'set_write_buffer_limits', 'get_write_buffer_limits',
    'get_write_buffer_size', 'set_read_buffer_limits', 'get_read_buffer_limits',
    'get_read_buffer_size', '_force_close', '_test__append_write_backlog',
)


def _true():
    return True


def _nothing():
    pass


class _SSLTransport(transports._FlowControlMixin, transports.Transport):
    """What asyncio's ``sslproto._SSLProtocolTransport`` is: the application's
    transport over TLS. ``_ssl_protocol`` is the Rust core (the raw transport's
    protocol), as in asyncio."""
    __slots__ = ('_ssl_protocol', '__weakref__') + _TLS_METHODS

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, core):
        self._loop = loop
        self._ssl_protocol = core
        core._set_app_transport(self)

    def __getattr__(self, name):
        # Core methods are bound into their slots on first use, as the stream
        # transport does: an idle connection pays only for what it has called.
        core = self._ssl_protocol
        if name in _TLS_METHODS and core is not None:
            method = getattr(core, name)
            setattr(self, name, method)
            return method
        raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')

    def close(self):
        core = self._ssl_protocol
        if core is None:
            return
        if not core._closed:
            core.close()
            return
        # asyncio's second close(): the transport lets go of the TLS layer, so a
        # protocol that keeps its transport keeps no connection state (nor the
        # SSLContext) alive. Only close(), abort() and is_closing() still work.
        self._ssl_protocol = None
        for name in _TLS_METHODS:
            try:
                delattr(self, name)
            except AttributeError:  # never bound
                pass
        self.is_closing = _true
        self.abort = _nothing

    @property
    def _closed(self):
        core = self._ssl_protocol
        return core is None or core._closed

    @property
    def _protocol_paused(self):
        return self._ssl_protocol._app_writing_paused

    def write_eof(self):
        raise NotImplementedError("SSL doesn't support half-closes")

    def can_write_eof(self):
        return False

    def __del__(self, _warn=warnings.warn):
        try:
            core = self._ssl_protocol
        except AttributeError:
            return
        if core is not None and not core._closed:
            _warn(f'unclosed transport {self!r}', ResourceWarning, source=self)


# 3.10's asyncio has no shutdown timeout (nor the constant); 3.11 made it 30 s.
_SSL_SHUTDOWN_TIMEOUT = getattr(constants, 'SSL_SHUTDOWN_TIMEOUT', 30.0)


def _check_timeout(name, value, default):
    if value is None:
        return default
    if value <= 0:
        raise ValueError(f'{name} should be a positive number, got {value}')
    return value


def make_tls(loop, app_protocol, sslcontext, waiter, server_side=False,
             server_hostname=None, ssl_handshake_timeout=None,
             ssl_shutdown_timeout=None, call_connection_made=True):
    """The TLS layer for ``app_protocol`` (asyncio's ``SSLProtocol(...)``): returns
    the core, to be made the raw transport's protocol; ``core._app_transport`` is
    the application's transport. A false ``sslcontext`` means a default client
    context, as in asyncio."""
    if ssl is None:
        raise RuntimeError('stdlib ssl module not available')
    ssl_handshake_timeout = _check_timeout(
        'ssl_handshake_timeout', ssl_handshake_timeout, constants.SSL_HANDSHAKE_TIMEOUT)
    ssl_shutdown_timeout = _check_timeout(
        'ssl_shutdown_timeout', ssl_shutdown_timeout, _SSL_SHUTDOWN_TIMEOUT)
    if not sslcontext:
        if server_side:
            raise ValueError('Server side SSL needs a valid SSLContext')
        sslcontext = ssl.create_default_context()
        if not server_hostname:
            sslcontext.check_hostname = False
    hostname = server_hostname if server_hostname and not server_side else None
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    sslobj = sslcontext.wrap_bio(incoming, outgoing, server_side=server_side,
                                 server_hostname=hostname)
    # A plain SSLObject only forwards to its _ssl object: the core calls that one
    # directly. A subclass (the context's sslobject_class) is called as it is.
    engine = sslobj._sslobj if type(sslobj) is ssl.SSLObject else sslobj
    core = TlsCore(loop, app_protocol, sslcontext, sslobj, engine, incoming, outgoing,
                   waiter, ssl_handshake_timeout, ssl_shutdown_timeout, call_connection_made)
    _SSLTransport(loop, core)
    return core
