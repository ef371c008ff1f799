//! TLS with rustls (ring provider) over glommio's sockets, through futures-rustls.
//!
//! Only configuration lives here: loading PEM files, building client and server configs,
//! choosing a certificate by SNI, classifying handshake failures. The record layer is
//! rustls's and the async glue is futures-rustls's; a TLS connection is one more kind of
//! [`crate::wire::Stream`], so everything that reads or writes a connection is unchanged.
//!
//! Configs are built per shard (each shard has its own client session cache, no lock is
//! shared on the request path) except the server's session-ticket key, which every shard
//! must share: SO_REUSEPORT sends a client's next connection to any shard, and a ticket
//! only one shard could open would never resume.
//!
//! kTLS is not available on the kernels this was built on; when it is, the handshake stays
//! here and the record layer moves into the kernel behind the same `Stream`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::server::ProducesTickets;

/// ALPN: coregate speaks HTTP/1.1 (and WebSocket over it) on both sides.
const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file. The error never
/// quotes the file's contents.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let ck = CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(ck))
}

/// Chooses the certificate for a handshake: the first entry naming the client's SNI
/// (exact, or `*.example.com` for one label), else the default.
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.by_name.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("SniResolver")
            .field("names", &names)
            .finish()
    }
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let wildcard = sni.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(sni))
            .or_else(|| {
                let w = wildcard.as_deref()?;
                self.by_name.iter().find(|(n, _)| n.eq_ignore_ascii_case(w))
            })
            .map_or_else(|| self.default.clone(), |(_, k)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// What a TLS listener serves, loaded once on the main thread: the certificates (a default
/// and more by SNI name) and the session-ticket key all shards share. `Send`; every shard
/// (of the gateway or of the mock) builds its own server config from it.
#[derive(Clone)]
pub struct ServerCerts {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl ServerCerts {
    /// A fresh ticket key (rotated by rustls every 6 hours) with these certificates.
    pub fn new(
        default: Arc<CertifiedKey>,
        by_name: Vec<(String, Arc<CertifiedKey>)>,
    ) -> Result<ServerCerts, String> {
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot create a TLS ticketer: {e}"))?;
        Ok(ServerCerts {
            default,
            by_name,
            ticketer,
        })
    }

    /// These certificates with `old`'s ticket key: a reload that changes certificates does
    /// not end the sessions clients could resume.
    pub fn with_ticketer_of(self, old: &ServerCerts) -> ServerCerts {
        ServerCerts {
            ticketer: old.ticketer.clone(),
            ..self
        }
    }

    /// A shard's own server config: TLS 1.2 and 1.3, ALPN `http/1.1` only (a client
    /// offering only `h2` fails its handshake at once, never hangs), the shared tickets.
    pub fn shard_config(&self) -> Result<Arc<ServerConfig>, String> {
        let certs = SniResolver {
            default: self.default.clone(),
            by_name: self.by_name.clone(),
        };
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS server config: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs));
        cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        cfg.ticketer = self.ticketer.clone();
        Ok(Arc::new(cfg))
    }
}

/// How a client config verifies the server.
pub enum Verify<'a> {
    /// The web's public roots (webpki-roots).
    PublicRoots,
    /// The CAs in a PEM file (a private provider's CA).
    CaFile(&'a Path),
    /// No verification at all: for tests against self-signed endpoints only.
    Off,
}

/// A client config with ALPN `http/1.1` and rustls's in-memory session cache (resumption
/// makes a pooled reconnect an abbreviated handshake).
pub fn client_config(verify: Verify<'_>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client config: {e}"))?;
    let mut cfg = match verify {
        Verify::PublicRoots => {
            let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// `template` with a session cache of its own: a shard's copy of a client config built once
/// for the process (no CA file read, no root store built on the shard), whose resumption
/// state stays on the shard.
pub fn with_own_sessions(template: &ClientConfig) -> Arc<ClientConfig> {
    let mut cfg = template.clone();
    cfg.resumption = rustls::client::Resumption::default();
    Arc::new(cfg)
}

/// The name a client sends as SNI and verifies: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// `tls_verify = false`: accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a handshake failed, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate chains to no trusted CA.
    UnknownCa,
    /// The certificate is valid but not for the name asked for.
    NameMismatch,
    /// The certificate expired or is not valid yet.
    Expired,
    /// Any other certificate problem (bad signature, wrong usage, revoked...).
    BadCertificate,
    /// No shared protocol version, cipher suite or ALPN protocol.
    NoCommonProtocol,
    /// The peer sent an alert (it refused our certificate or parameters).
    PeerAlert,
    /// The peer did not speak TLS, or broke the protocol.
    Protocol,
    /// The peer closed the connection during the handshake.
    Closed,
    /// The handshake did not finish in time.
    Timeout,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::UnknownCa,
        HandshakeFailure::NameMismatch,
        HandshakeFailure::Expired,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::NoCommonProtocol,
        HandshakeFailure::PeerAlert,
        HandshakeFailure::Protocol,
        HandshakeFailure::Closed,
        HandshakeFailure::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::NameMismatch => "name_mismatch",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::NoCommonProtocol => "no_common_protocol",
            HandshakeFailure::PeerAlert => "peer_alert",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
        }
    }

    /// Classifies the error a futures-rustls handshake returned.
    pub fn of(e: &io::Error) -> HandshakeFailure {
        use rustls::{CertificateError as C, Error as E, PeerIncompatible};
        if e.kind() == io::ErrorKind::TimedOut {
            return HandshakeFailure::Timeout;
        }
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                _ => HandshakeFailure::Protocol,
            };
        };
        match tls {
            E::InvalidCertificate(C::UnknownIssuer) => HandshakeFailure::UnknownCa,
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                HandshakeFailure::NameMismatch
            }
            E::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => HandshakeFailure::Expired,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => {
                HandshakeFailure::BadCertificate
            }
            E::NoApplicationProtocol
            | E::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
                | PeerIncompatible::NoKxGroupsInCommon
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired,
            ) => HandshakeFailure::NoCommonProtocol,
            E::AlertReceived(_) => HandshakeFailure::PeerAlert,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// What a finished handshake was.
#[derive(Debug, Clone, Copy)]
pub struct Handshake {
    /// An abbreviated handshake (session ticket or ID) rather than a full one.
    pub resumed: bool,
}

fn handshake_of(conn: &rustls::CommonState) -> Handshake {
    Handshake {
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}

/// The client side of a handshake on a connected socket, bounded by `timeout`.
pub async fn connect(
    tcp: glommio::net::TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: std::time::Duration,
) -> io::Result<(crate::wire::Stream, Handshake)> {
    let handshake = TlsConnector::from(config).connect(name, tcp);
    let s = glommio::timer::timeout(timeout, async { Ok(handshake.await) })
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let hs = handshake_of(s.get_ref().1);
    Ok((crate::wire::Stream::tls(s.into()), hs))
}

/// The server side of a handshake on an accepted socket, bounded by `timeout`.
pub async fn accept(
    tcp: glommio::net::TcpStream,
    config: Arc<ServerConfig>,
    timeout: std::time::Duration,
) -> io::Result<(crate::wire::Stream, Handshake)> {
    let handshake = TlsAcceptor::from(config).accept(tcp);
    let s = glommio::timer::timeout(timeout, async { Ok(handshake.await) })
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let hs = handshake_of(s.get_ref().1);
    Ok((crate::wire::Stream::tls(s.into()), hs))
}
