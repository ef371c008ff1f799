//! Parsing of CPU core lists such as `0-3,6` (the `--cores` flag and `server.cores` key).

use std::collections::BTreeSet;

/// Parses a core list: comma-separated core ids and inclusive ranges (`0-3,6`).
/// `all` (or an empty string) means every online core, as reported by `online`.
/// The result is sorted and free of duplicates.
pub fn parse_core_list(spec: &str, online: &[usize]) -> Result<Vec<usize>, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "all" {
        if online.is_empty() {
            return Err("no online cores found".into());
        }
        return Ok(online.to_vec());
    }
    let mut set = BTreeSet::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_id(a, spec)?, parse_id(b, spec)?),
            None => {
                let id = parse_id(part, spec)?;
                (id, id)
            }
        };
        if lo > hi {
            return Err(format!("range {part} in {spec:?} is reversed"));
        }
        // Checked before the range is expanded: `0-99999999999` would otherwise fill the
        // set one core at a time (found by fuzzing the config loader: a hang and 380 MB).
        let last = online.iter().copied().max();
        if last.is_none_or(|last| hi > last) {
            return Err(format!(
                "core {hi} in {spec:?} is not online (online: {online:?})"
            ));
        }
        set.extend(lo..=hi);
    }
    let offline: Vec<usize> = set
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    if !offline.is_empty() {
        return Err(format!(
            "core(s) {offline:?} in {spec:?} are not online (online: {online:?})"
        ));
    }
    Ok(set.into_iter().collect())
}

fn parse_id(s: &str, spec: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("{s:?} in core list {spec:?} is not a core number"))
}

/// The cores this process may run on (its affinity mask), in ascending order.
pub fn online_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_range_is_refused_without_expanding_it() {
        let err = super::parse_core_list("0-99999999999", &[0, 1]).unwrap_err();
        assert!(err.contains("99999999999"), "{err}");
    }

    use super::*;

    #[test]
    fn ranges_and_singles() {
        let online: Vec<usize> = (0..8).collect();
        assert_eq!(
            parse_core_list("0-3,6", &online).unwrap(),
            vec![0, 1, 2, 3, 6]
        );
        assert_eq!(parse_core_list("2,1,2", &online).unwrap(), vec![1, 2]);
        assert_eq!(parse_core_list("all", &online).unwrap(), online);
    }

    #[test]
    fn rejects_bad_lists() {
        let online = vec![0, 1];
        assert!(parse_core_list("3", &online).is_err());
        assert!(parse_core_list("1-0", &online).is_err());
        assert!(parse_core_list("x", &online).is_err());
        assert!(parse_core_list("0,,1", &online).is_err());
    }
}
