use super::leaks::unescape_mountinfo;
use super::*;

#[test]
fn cri_log_parse() {
    let l = parse_cri_log(
            "2016-10-06T00:17:09.669794202Z stdout F hello\n2016-10-06T00:17:09.669794202Z stderr P part\n2016-10-06T00:17:09.669794202Z stdout F \n",
        )
        .unwrap();
    assert_eq!(l.len(), 3);
    assert!(has_line(&l, "stdout", "hello"));
    assert_eq!(l[1].tag, "P");
    assert_eq!(l[2].text, "");
    assert!(parse_cri_log("garbage\n").is_err());
    assert!(parse_cri_log("2016-10-06T00:17:09Z stdin F x\n").is_err());
}

#[test]
fn mountinfo_escape() {
    assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
}
