//! What `tollgate test` prints: one line per case (and, for a failure, what was expected,
//! what the policy answered, and its decision trace), and the same results as JUnit XML
//! for CI systems.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    /// Line of the case in the cases file.
    pub line: usize,
    /// What the policy answered, e.g. `403 access_denied (reason client_not_allowed)`.
    pub got: String,
    /// Empty when the case passed; otherwise each way the answer differed.
    pub mismatches: Vec<String>,
    /// The decision trace (every gate's line, then the result).
    pub trace: Vec<String>,
    pub seconds: f64,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// The text report: `PASS name` / `FAIL name` lines, a failure's details and trace, and
/// a summary line.
pub fn text(file: &str, results: &[CaseResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.passed() {
            out.push_str(&format!("PASS  {}  ({})\n", r.name, r.got));
            continue;
        }
        out.push_str(&format!("FAIL  {}  ({file}:{})\n", r.name, r.line));
        for m in &r.mismatches {
            out.push_str(&format!("      {m}\n"));
        }
        out.push_str("      decision trace:\n");
        for l in &r.trace {
            out.push_str(&format!("        {l}\n"));
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    out.push_str(&format!(
        "{file}: {} passed, {failed} failed\n",
        results.len() - failed
    ));
    out
}

/// XML 1.0 cannot carry most control characters, even escaped.
fn xml_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// JUnit XML (the format Jenkins, GitLab and GitHub test reporters read): one
/// `<testsuite>` for the cases file, one `<testcase>` per case, a `<failure>` with the
/// mismatches and the decision trace for each failed case.
pub fn junit(file: &str, results: &[CaseResult]) -> io::Result<String> {
    let failures = results.iter().filter(|r| !r.passed()).count().to_string();
    let tests = results.len().to_string();
    let time = format!("{:.3}", results.iter().map(|r| r.seconds).sum::<f64>());
    let suite = xml_safe(file);
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes([
            ("name", "tollgate test"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", "0"),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", suite.as_str()),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", "0"),
                    ("skipped", "0"),
                    ("time", time.as_str()),
                ])
                .write_inner_content(|w| {
                    for r in results {
                        let name = xml_safe(&r.name);
                        let t = format!("{:.3}", r.seconds);
                        let line = r.line.to_string();
                        let case = w.create_element("testcase").with_attributes([
                            ("name", name.as_str()),
                            ("classname", suite.as_str()),
                            ("file", suite.as_str()),
                            ("line", line.as_str()),
                            ("time", t.as_str()),
                        ]);
                        if r.passed() {
                            case.write_empty()?;
                            continue;
                        }
                        let message = xml_safe(&r.mismatches.join("; "));
                        let mut body = r.mismatches.join("\n");
                        body.push_str("\n\ndecision trace:\n");
                        body.push_str(&r.trace.join("\n"));
                        let body = xml_safe(&body);
                        case.write_inner_content(|w| {
                            w.create_element("failure")
                                .with_attributes([
                                    ("message", message.as_str()),
                                    ("type", "PolicyMismatch"),
                                ])
                                .write_text_content(BytesText::new(&body))?;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut xml = String::from_utf8(w.into_inner()).map_err(io::Error::other)?;
    xml.push('\n');
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: names with XML metacharacters and control characters still give
    // well-formed XML with the right counts.
    #[test]
    fn junit_is_well_formed() {
        let results = vec![
            CaseResult {
                name: "a <b> & \"c\"".into(),
                line: 3,
                got: "200".into(),
                mismatches: vec![],
                trace: vec![],
                seconds: 0.001,
            },
            CaseResult {
                name: "bad\u{1}name".into(),
                line: 9,
                got: "403".into(),
                mismatches: vec!["expected status 200, got 403 <x>".into()],
                trace: vec!["route: r".into(), "result: DENY".into()],
                seconds: 0.002,
            },
        ];
        let xml = junit("cases & co.yaml", &results).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("tests"), Some("2"));
        assert_eq!(root.attribute("failures"), Some("1"));
        let cases: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases[0].attribute("name"), Some("a <b> & \"c\""));
        let failure = cases[1]
            .children()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.attribute("message"),
            Some("expected status 200, got 403 <x>")
        );
        assert!(failure.text().unwrap().contains("result: DENY"));
    }
}
