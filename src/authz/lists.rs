//! Allow and block lists of `[auth]`, with upstream's precedence:
//!
//! | # | rule                                   | result  |
//! |---|----------------------------------------|---------|
//! | 1 | user in `user_allowlist`               | allowed (authoritative, beats every other list) |
//! | 2 | user in `user_blocklist`               | refused (beats the group lists) |
//! | 3 | a group in `groups_blocklist`          | refused |
//! | 4 | a group in `groups_allowlist`          | allowed |
//! | 5 | neither allowlist is set               | allowed |
//! | 6 | otherwise (an allowlist is set, no match) | refused |

use crate::config::Auth;

/// The account the lists are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    /// Names of the primary and supplementary groups.
    pub groups: Vec<String>,
}

/// The decision and the rule that made it (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(&'static str),
    Refused(String),
}

/// Apply the lists of `auth` to `s`.
pub fn check(auth: &Auth, s: &Subject) -> Decision {
    let has = |list: &[String], x: &str| list.iter().any(|v| v == x);
    if has(&auth.user_allowlist, &s.name) {
        return Decision::Allowed("user is in user_allowlist");
    }
    if has(&auth.user_blocklist, &s.name) {
        return Decision::Refused(format!("user {} is in user_blocklist", s.name));
    }
    if let Some(g) = s.groups.iter().find(|g| has(&auth.groups_blocklist, g)) {
        return Decision::Refused(format!(
            "user {} is in group {g}, which is in groups_blocklist",
            s.name
        ));
    }
    if s.groups.iter().any(|g| has(&auth.groups_allowlist, g)) {
        return Decision::Allowed("a group of the user is in groups_allowlist");
    }
    if auth.user_allowlist.is_empty() && auth.groups_allowlist.is_empty() {
        return Decision::Allowed("no allowlist is configured");
    }
    Decision::Refused(format!(
        "user {} is in neither user_allowlist nor groups_allowlist (groups: {})",
        s.name,
        if s.groups.is_empty() {
            "none".to_string()
        } else {
            s.groups.join(", ")
        }
    ))
}

/// GitLab's bot accounts: `project_<n>_bot...` (project access tokens) and
/// `group_<n>_bot...` (group access tokens).
pub fn is_bot(login: &str) -> bool {
    ["project_", "group_"].iter().any(|p| {
        login.strip_prefix(p).is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with("_bot")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(ua: &[&str], ub: &[&str], ga: &[&str], gb: &[&str]) -> Auth {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let text = "[general]\nexecutor=\"shell\"\ndata_dir=\"/tmp\"\n[auth]\ndownscope=\"none\"\n";
        let mut a = crate::config::Config::from_str_named(text, "t")
            .unwrap()
            .auth;
        a.user_allowlist = v(ua);
        a.user_blocklist = v(ub);
        a.groups_allowlist = v(ga);
        a.groups_blocklist = v(gb);
        a
    }

    #[test]
    fn precedence_table() {
        // (user allow, user block, group allow, group block, user, groups, allowed?)
        type Row = (
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
            &'static str,
            &'static [&'static str],
            bool,
        );
        let rows: &[Row] = &[
            (&[], &[], &[], &[], "u", &["g"], true),
            (&["u"], &[], &[], &[], "u", &["g"], true),
            (&["x"], &[], &[], &[], "u", &["g"], false),
            (&[], &["u"], &[], &[], "u", &["g"], false),
            (&["u"], &["u"], &[], &[], "u", &["g"], true),
            (&["u"], &[], &[], &["g"], "u", &["g"], true),
            (&[], &[], &[], &["g"], "u", &["g"], false),
            (&[], &[], &["g"], &[], "u", &["g"], true),
            (&[], &[], &["g"], &[], "u", &["h"], false),
            (&[], &["u"], &["g"], &[], "u", &["g"], false),
            (&[], &[], &["g"], &["g"], "u", &["g"], false),
            (&[], &[], &["g"], &["h"], "u", &["g", "h"], false),
            (&["x"], &[], &["g"], &[], "u", &["g"], true),
            (&["x"], &[], &[], &[], "u", &[], false),
        ];
        for (i, (ua, ub, ga, gb, user, groups, want)) in rows.iter().enumerate() {
            let s = Subject {
                name: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            };
            let d = check(&auth(ua, ub, ga, gb), &s);
            assert_eq!(matches!(d, Decision::Allowed(_)), *want, "row {i}: {d:?}");
        }
    }

    #[test]
    fn bots() {
        for b in ["project_12_bot", "project_3_bot_4f2a", "group_9_bot_x"] {
            assert!(is_bot(b), "{b}");
        }
        for h in [
            "project_bot",
            "project_x_bot",
            "alice",
            "projects_1_bot",
            "project_1_robot",
        ] {
            assert!(!is_bot(h), "{h}");
        }
    }
}
