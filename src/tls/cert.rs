//! What concord reads from a DER certificate itself: the subject's common name and the validity
//! period. Only the path to each field is read (Certificate → TBSCertificate → field), as DER lays it
//! out in RFC 5280; anything else gives `None`.

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0; // [0] EXPLICIT, present from v2 on
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

/// One DER element at the start of `input`: (tag, contents, the rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (n as usize, rest),
        n => {
            let bytes = (n & 0x7f) as usize;
            if bytes == 0 || bytes > 4 || rest.len() < bytes {
                return None;
            }
            let len = rest[..bytes].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
            (len, &rest[bytes..])
        }
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The TBSCertificate's fields from `validity` on: validity, subject, ...
fn from_validity(der: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(der)? else { return None };
    let (SEQUENCE, mut tbs, _) = element(cert)? else { return None };
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    Some(tbs)
}

/// The subject common name of a DER certificate: with `--client-cert-auth` and auth on, a client
/// certificate's CN names the user, as in etcd.
pub fn common_name(der: &[u8]) -> Option<String> {
    let tbs = element(from_validity(der)?)?.2;
    let (SEQUENCE, mut subject, _) = element(tbs)? else { return None };
    while !subject.is_empty() {
        let (SET, mut rdn, rest) = element(subject)? else { return None };
        subject = rest;
        while !rdn.is_empty() {
            let (SEQUENCE, attribute, rest) = element(rdn)? else { return None };
            rdn = rest;
            let (_, oid, value) = element(attribute)?;
            if oid == COMMON_NAME {
                return String::from_utf8(element(value)?.1.to_vec()).ok();
            }
        }
    }
    None
}

/// The validity period (notBefore, notAfter) in seconds since the Unix epoch.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (SEQUENCE, validity, _) = element(from_validity(der)?)? else { return None };
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((not_before, time(tag, not_after)?))
}

/// A UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 §4.1.2.5
/// allows them in a certificate.
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |d: &[u8]| d.iter().fold(0u64, |n, c| n * 10 + u64::from(c - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => match number(&digits[..2]) {
            yy @ 50.. => (1900 + yy, &digits[2..]),
            yy => (2000 + yy, &digits[2..]),
        },
        (GENERALIZED_TIME, 14) => (number(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| number(&rest[i..i + 2]));
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_subject_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "concord");
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(super::common_name(cert.der()).as_deref(), Some("alice"));

        let no_cn =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let cn = super::common_name(no_cn.der());
        assert!(cn.is_none() || cn.as_deref() == Some("rcgen self signed cert"), "{cn:?}");
        assert_eq!(super::common_name(&cert.der()[..40]), None, "a truncated certificate");
        assert_eq!(super::common_name(b""), None);
    }

    #[test]
    fn reads_the_validity_period() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050 on, as RFC 5280 asks.
        params.not_before = rcgen::date_time_ymd(2024, 2, 29);
        params.not_after = rcgen::date_time_ymd(2051, 12, 31);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(super::validity(cert.der()), Some((1_709_164_800, 2_587_593_600)));
        assert_eq!(super::validity(&cert.der()[..60]), None, "a truncated certificate");
    }

    #[test]
    fn reads_both_time_encodings() {
        assert_eq!(super::time(super::UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(super::time(super::UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(super::time(super::GENERALIZED_TIME, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(super::time(super::UTC_TIME, b"20000301000000Z"), None, "wrong length for the tag");
        assert_eq!(super::time(super::UTC_TIME, b"700101000000"), None, "no Z");
        assert_eq!(super::time(super::UTC_TIME, b"701301000000Z"), None, "month 13");
    }
}
