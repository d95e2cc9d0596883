//go:build linux

package integration_test

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// The documentation's own checks: every relative link and image in the
// README, docs/*.md and the benchmark's README resolves to a file and,
// for #anchor, to a heading of that file; the README stays an
// introduction (readmeMaxWords) and links every page of docs/. They read
// files only: no root, no network, no process.

// readmeMaxWords bounds the README, counted as wc -w counts.
const readmeMaxWords = 3000

// docFiles returns the Markdown files whose links are checked, relative
// to this package's directory.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no docs/*.md: the README's detail lives there")
	}
	return append([]string{filepath.Join("..", "README.md"), filepath.Join("..", "cmd", "handoff-bench", "README.md")}, pages...)
}

// TestDocsLinksResolve checks every relative link and image of the
// documentation: the file it names exists and its #anchor, if any, is
// the slug of one of that file's headings.
func TestDocsLinksResolve(t *testing.T) {
	var links int
	for _, file := range docFiles(t) {
		n, problems := checkLinks(file)
		links += n
		for _, p := range problems {
			t.Errorf("%s", p)
		}
	}
	t.Logf("%d links checked", links)
	if links == 0 {
		t.Error("no link found: the link parser is broken")
	}
}

// TestDocsLinkCheckFindsBrokenLinks proves the check of
// TestDocsLinksResolve on pages of its own: a missing file, a missing
// anchor in another page and in the same page, and a missing image are
// each reported with their file and line, and good links are not.
func TestDocsLinkCheckFindsBrokenLinks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("docs/page.md", "# Page\n\n## Draining with net/http\n\n### `worker.Conn` is not a `*net.TCPConn`\n\n## Twice\n\n## Twice\n")
	write("docs/chart.png", "png")
	write("README.md", strings.Join([]string{
		"# Title", // 1
		"[good](docs/page.md) [good](docs/page.md#draining-with-nethttp)",                                 // 2
		"[good](docs/page.md#workerconn-is-not-a-nettcpconn) [good](#title) [good](docs/page.md#twice-1)", // 3
		"[web](https://example.com/x) [mail](mailto:a@b.c) ![img](docs/chart.png)",                        // 4
		"`[code](missing.md)`",                   // 5: code, not a link
		"```",                                    // 6
		"[fenced](missing.md)",                   // 7: code, not a link
		"```",                                    // 8
		"[missing file](docs/nothere.md)",        // 9
		"[missing anchor](docs/page.md#nothere)", // 10
		"[missing local anchor](#nothere)",       // 11
		"![missing image](docs/nothere.png)",     // 12
		"[anchor in a non-Markdown file](docs/chart.png#x)", // 13
		"",
	}, "\n"))
	n, problems := checkLinks(filepath.Join(dir, "README.md"))
	want := []string{
		"README.md:9: docs/nothere.md",
		"README.md:10: docs/page.md#nothere",
		"README.md:11: #nothere",
		"README.md:12: docs/nothere.png",
		"README.md:13: docs/chart.png#x",
	}
	if n != 13 {
		t.Errorf("found %d links, want 13 (5 of them broken)", n)
	}
	if len(problems) != len(want) {
		t.Errorf("the check reported %d problems, want %d:\n%s", len(problems), len(want), strings.Join(problems, "\n"))
	}
	for _, w := range want {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, w) }) {
			t.Errorf("the check did not report %q; it reported:\n%s", w, strings.Join(problems, "\n"))
		}
	}
}

// TestDocsREADMEIsShort keeps the README an introduction: at most
// readmeMaxWords words, the detail in docs/.
func TestDocsREADMEIsShort(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := len(strings.Fields(string(readme)))
	t.Logf("README.md: %d words", n)
	if n > readmeMaxWords {
		t.Errorf("README.md has %d words, want at most %d: move the detail to a page of docs/", n, readmeMaxWords)
	}
}

// TestDocsPagesLinkedFromREADME checks that the README links every page
// of docs/, so that none is found only by browsing the directory.
func TestDocsPagesLinkedFromREADME(t *testing.T) {
	readme := filepath.Join("..", "README.md")
	text, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, l := range findLinks(string(text)) {
		if hasScheme(l.target) {
			continue
		}
		path, _, _ := strings.Cut(l.target, "#")
		if path != "" {
			linked[filepath.Clean(filepath.Join(filepath.Dir(readme), path))] = true
		}
	}
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, page := range pages {
		if !linked[filepath.Clean(page)] {
			t.Errorf("README.md does not link %s", strings.TrimPrefix(filepath.ToSlash(page), "../"))
		}
	}
}

// checkLinks checks the relative links of the Markdown file at path. It
// returns how many links it found and one "file:line: target: why" per
// broken one.
func checkLinks(path string) (int, []string) {
	text, err := os.ReadFile(path)
	if err != nil {
		return 0, []string{fmt.Sprintf("%s: %v", path, err)}
	}
	name := strings.TrimPrefix(filepath.ToSlash(path), "../")
	links := findLinks(string(text))
	var problems []string
	for _, l := range links {
		if hasScheme(l.target) {
			continue
		}
		file, anchor, hasAnchor := strings.Cut(l.target, "#")
		if p, err := url.PathUnescape(file); err == nil {
			file = p
		}
		target := path // a bare #anchor is in this file
		if file != "" {
			target = filepath.Join(filepath.Dir(path), filepath.FromSlash(file))
		}
		broken := func(why string) {
			problems = append(problems, fmt.Sprintf("%s:%d: %s: %s", name, l.line, l.target, why))
		}
		if _, err := os.Stat(target); err != nil {
			broken("no such file")
			continue
		}
		if !hasAnchor {
			continue
		}
		if !strings.HasSuffix(target, ".md") {
			broken("an anchor in a file that is not Markdown")
			continue
		}
		headings, err := os.ReadFile(target)
		if err != nil {
			broken(err.Error())
			continue
		}
		if !slices.Contains(headingSlugs(string(headings)), anchor) {
			broken(fmt.Sprintf("no heading with the slug %q in %s", anchor, strings.TrimPrefix(filepath.ToSlash(target), "../")))
		}
	}
	return len(links), problems
}

// mdLink is a Markdown link or image: its target and the line it is on.
type mdLink struct {
	target string
	line   int
}

var (
	// linkRE matches an inline link or image, [text](target) or
	// ![alt](target "title"), capturing the target.
	linkRE = regexp.MustCompile(`!?\[[^\]]*\]\(<?([^)\s>]*)>?(?:\s+"[^"]*")?\)`)
	// codeSpanRE matches an inline code span, whose text is no link.
	codeSpanRE = regexp.MustCompile("`+[^`]*`+")
	// headingLinkRE matches a link in a heading, capturing its text.
	headingLinkRE = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`)
	// schemeRE matches a target with a URL scheme (https:, mailto:).
	schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// findLinks returns the links of a Markdown text, outside fenced code
// blocks and code spans.
func findLinks(text string) []mdLink {
	var links []mdLink
	for i, line := range markdownLines(text) {
		if line == "" {
			continue
		}
		line = codeSpanRE.ReplaceAllString(line, "")
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			links = append(links, mdLink{target: m[1], line: i + 1})
		}
	}
	return links
}

// markdownLines returns the lines of text with those of fenced code
// blocks (``` or ~~~, fences included) emptied, so that indexes stay
// line numbers.
func markdownLines(text string) []string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, line := range lines {
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case fence != "":
			if strings.HasPrefix(trimmed, fence) && strings.Trim(trimmed, fence[:1]+" ") == "" {
				fence = ""
			}
			lines[i] = ""
		case strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~"):
			fence = trimmed[:3]
			lines[i] = ""
		}
	}
	return lines
}

// headingSlugs returns the anchors GitHub gives the ATX headings of a
// Markdown text, a repeated one suffixed -1, -2 and so on.
func headingSlugs(text string) []string {
	var slugs []string
	seen := map[string]int{}
	for _, line := range markdownLines(text) {
		level := len(line) - len(strings.TrimLeft(line, "#"))
		if level == 0 || level > 6 || (len(line) > level && line[level] != ' ') {
			continue
		}
		s := slugify(strings.TrimRight(strings.TrimSpace(line[level:]), "# "))
		if n := seen[s]; n > 0 {
			slugs = append(slugs, fmt.Sprintf("%s-%d", s, n))
		} else {
			slugs = append(slugs, s)
		}
		seen[s]++
	}
	return slugs
}

// slugify makes a heading's anchor as GitHub does: the text of its
// links, lowercased, without punctuation other than - and _, each space
// a hyphen.
func slugify(heading string) string {
	heading = headingLinkRE.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsNumber(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// hasScheme reports whether a link target is a URL with a scheme, which
// the check leaves alone.
func hasScheme(target string) bool { return schemeRE.MatchString(target) }
