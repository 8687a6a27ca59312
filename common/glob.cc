#include "common/glob.h"

#include <cctype>
#include <cstddef>
#include <string_view>

namespace shmbroker {
namespace {

bool InClass(std::string_view cls, unsigned char c) {
  if (cls == "alpha") return std::isalpha(c);
  if (cls == "digit") return std::isdigit(c);
  if (cls == "alnum") return std::isalnum(c);
  if (cls == "upper") return std::isupper(c);
  if (cls == "lower") return std::islower(c);
  if (cls == "space") return std::isspace(c);
  if (cls == "blank") return c == ' ' || c == '\t';
  if (cls == "punct") return std::ispunct(c);
  if (cls == "xdigit") return std::isxdigit(c);
  if (cls == "print") return std::isprint(c);
  if (cls == "graph") return std::isgraph(c);
  if (cls == "cntrl") return std::iscntrl(c);
  return false;
}

// A bracket expression starting at pat[i] == '['. Sets `end` past its ']' and returns whether it
// matches `c`; returns false with end == i when it is not closed (then '[' is an ordinary char).
bool Bracket(std::string_view pat, std::size_t i, unsigned char c, std::size_t& end) {
  std::size_t j = i + 1;
  bool negate = j < pat.size() && (pat[j] == '!' || pat[j] == '^');
  if (negate) ++j;
  bool matched = false;
  bool first = true;
  while (j < pat.size()) {
    if (pat[j] == ']' && !first) {
      end = j + 1;
      return matched != negate;
    }
    first = false;
    if (pat[j] == '[' && j + 1 < pat.size() && pat[j + 1] == ':') {
      std::size_t close = pat.find(":]", j + 2);
      if (close != std::string_view::npos) {
        matched |= InClass(pat.substr(j + 2, close - j - 2), c);
        j = close + 2;
        continue;
      }
    }
    unsigned char lo = static_cast<unsigned char>(pat[j]);
    if (lo == '\\' && j + 1 < pat.size()) lo = static_cast<unsigned char>(pat[++j]);
    ++j;
    unsigned char hi = lo;
    if (j + 1 < pat.size() && pat[j] == '-' && pat[j + 1] != ']') {
      hi = static_cast<unsigned char>(pat[j + 1]);
      if (hi == '\\' && j + 2 < pat.size()) hi = static_cast<unsigned char>(pat[++j + 1]);
      j += 2;
    }
    if (lo <= c && c <= hi) matched = true;
  }
  end = i;  // Not closed.
  return false;
}

// Whether the single-character element at pat[p] (not '*') matches c; `next` is past it.
bool One(std::string_view pat, std::size_t p, unsigned char c, std::size_t& next) {
  char pc = pat[p];
  if (pc == '?') {
    next = p + 1;
    return true;
  }
  if (pc == '[') {
    std::size_t end;
    bool m = Bracket(pat, p, c, end);
    if (end != p) {
      next = end;
      return m;
    }
  }
  if (pc == '\\') {  // A trailing backslash makes the pattern invalid: fnmatch matches nothing.
    next = p + 2;
    return p + 1 < pat.size() && static_cast<unsigned char>(pat[p + 1]) == c;
  }
  next = p + 1;
  return static_cast<unsigned char>(pc) == c;
}

}  // namespace

bool GlobMatch(std::string_view pattern, std::string_view name) {
  // Greedy with one backtrack point, the last '*': whatever an earlier '*' matched, a later one
  // can absorb, so backtracking further never finds a match this misses.
  constexpr std::size_t kNone = std::string_view::npos;
  std::size_t p = 0, n = 0, star_p = kNone, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star_p = ++p;
      star_n = n;
      continue;
    }
    std::size_t next;
    if (p < pattern.size() && One(pattern, p, static_cast<unsigned char>(name[n]), next)) {
      p = next;
      ++n;
      continue;
    }
    if (star_p == kNone) return false;
    p = star_p;
    n = ++star_n;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace shmbroker
