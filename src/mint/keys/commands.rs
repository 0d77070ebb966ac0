//! The `avemint keys …` commands: what each does and what it prints. The
//! binary only parses arguments and prints the returned text, so these are
//! tested as library code and over the real binary.

use super::rotation::{JWKS_CACHE_LIFETIME, KeyDir, RETIRED_HOLD, format_age, unix_now};
use super::{Algorithm, KeyError, KeyRing, KeyState};

/// `keys generate [--alg …]`.
pub fn generate(dir: &KeyDir, alg: Algorithm) -> Result<String, KeyError> {
    let entry = dir.generate(alg, unix_now())?;
    let what = match entry.state {
        KeyState::Current => "it signs new tokens now (the directory had no key)".to_owned(),
        _ => format!(
            "it is published now and may sign after `avemint keys rotate` in {}",
            format_age(JWKS_CACHE_LIFETIME.as_secs())
        ),
    };
    Ok(format!(
        "generated {} key {} ({}): {what}\n",
        entry.alg,
        entry.kid,
        entry.state.as_str()
    ))
}

/// `keys list`: one line per key, current first: kid, alg, state, age.
pub fn list(dir: &KeyDir) -> Result<String, KeyError> {
    let ring = KeyRing::load(dir.path())?;
    let now = unix_now();
    let mut out = format!("{:<43}  {:<5}  {:<7}  {:<7}  NOTE\n", "KID", "ALG", "STATE", "AGE");
    for k in ring.keys() {
        let e = &k.entry;
        let note = match e.state {
            KeyState::Current => "signs new tokens".to_owned(),
            KeyState::Next => {
                let ready = e.created.saturating_add(JWKS_CACHE_LIFETIME.as_secs());
                if ready <= now {
                    "ready to sign (`keys rotate`)".to_owned()
                } else {
                    format!("ready to sign in {}", format_age(ready - now))
                }
            }
            KeyState::Retired => {
                let until = e.retired.unwrap_or(e.created).saturating_add(RETIRED_HOLD.as_secs());
                if until <= now {
                    "expired; removed by `keys prune`".to_owned()
                } else {
                    format!("published for {} more", format_age(until - now))
                }
            }
        };
        out.push_str(&format!(
            "{:<43}  {:<5}  {:<7}  {:<7}  {note}\n",
            e.kid,
            e.alg.jws(),
            e.state.as_str(),
            format_age(now.saturating_sub(e.created)),
        ));
    }
    Ok(out)
}

/// `keys rotate [--alg …] [--force]`.
pub fn rotate(dir: &KeyDir, alg: Algorithm, force: bool) -> Result<String, KeyError> {
    let r = dir.rotate(alg, unix_now(), force)?;
    Ok(format!(
        "rotated: {} retired (still published), {} now signs, {} is the new next key ({alg})\n",
        r.retired, r.current, r.next
    ))
}

/// `keys prune`.
pub fn prune(dir: &KeyDir) -> Result<String, KeyError> {
    let gone = dir.prune(unix_now())?;
    if gone.is_empty() {
        return Ok("nothing to prune\n".into());
    }
    Ok(gone
        .iter()
        .map(|k| format!("removed retired key {}\n", k.kid))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_list_rotate_prune_texts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = KeyDir::new(tmp.path().join("k"));
        assert!(generate(&dir, Algorithm::Es256).expect("gen").contains("(current)"));
        assert!(generate(&dir, Algorithm::EdDsa).expect("gen").contains("(next)"));
        let text = list(&dir).expect("list");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("KID"));
        assert!(lines[1].contains("ES256") && lines[1].contains("current"), "{text}");
        assert!(lines[2].contains("EdDSA") && lines[2].contains("next"), "{text}");
        assert!(rotate(&dir, Algorithm::Es256, false).is_err(), "next too new");
        assert!(
            rotate(&dir, Algorithm::Es256, true)
                .expect("forced")
                .starts_with("rotated")
        );
        assert_eq!(prune(&dir).expect("prune"), "nothing to prune\n");
    }
}
