//! Certificates made at run time (rcgen): a test CA and leaf certificates it signs, written
//! as PEM files into a test's own directory. No private key is committed.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA that signs leaf certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    /// Its certificate, as a PEM file (what `ca_file`, `--cacert` and `cafile=` take).
    pub pem: PathBuf,
}

/// A leaf certificate and key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("coregate test CA {name}"));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa { cert, key, pem }
    }

    /// A server certificate for `names` (DNS names or IP literals), valid from yesterday
    /// for a day unless `expired` (then it ended in 2020).
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, names[0].clone());
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        } else {
            let now = std::time::SystemTime::now();
            p.not_before = (now - std::time::Duration::from_secs(86_400)).into();
            p.not_after = (now + std::time::Duration::from_secs(2 * 86_400)).into();
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let leaf = Leaf {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}
