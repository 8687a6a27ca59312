// GlobMatch agrees with fnmatch(3) (no flags) and its cost stays within O(pattern x name).
#include "common/glob.h"

#include <fnmatch.h>
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <string>

namespace shmbroker {
namespace {

bool Fnmatch(const std::string& p, const std::string& n) {
  return ::fnmatch(p.c_str(), n.c_str(), 0) == 0;
}

TEST(Glob, AgreesWithFnmatchOnTheCasesThatMatter) {
  const char* patterns[] = {
      "",        "*",       "?",     "job7/*", "*/c",    "a*b*c",        "a\\*b", "[abc]x",
      "[!abc]x", "[^a-c]x", "[a-]x", "[]a]x",  "[!]a]x", "[[:digit:]]*", "x[",    "x[a",
      "\\",      "a\\",     "**a**", "*a?c*",  "[\\]]",  "[a\\-z]"};
  const char* names[] = {"",    "a",  "abc", "job7/a", "job7/b/c", "x/c", "aXbYc", "a*b",
                         "axb", "bx", "dx",  "-x",     "]x",       "ax",  "1abc",  "x[",
                         "x[a", "\\", "a\\", "zaz",    "zabcz",    "]",   "-",     "b"};
  for (const char* p : patterns) {
    for (const char* n : names) {
      EXPECT_EQ(GlobMatch(p, n), Fnmatch(p, n)) << "pattern '" << p << "' name '" << n << "'";
    }
  }
}

TEST(Glob, AgreesWithFnmatchOnRandomPatterns) {
  std::mt19937 rng(42);
  const std::string pattern_chars = "ab*?[]!-/\\";
  const std::string name_chars = "ab/-]\\";
  auto make = [&](const std::string& alphabet, int max) {
    std::string s(rng() % (max + 1), ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    return s;
  };
  for (int i = 0; i < 100000; ++i) {
    std::string p = make(pattern_chars, 8), n = make(name_chars, 8);
    ASSERT_EQ(GlobMatch(p, n), Fnmatch(p, n)) << "pattern '" << p << "' name '" << n << "'";
  }
}

TEST(Glob, ManyStarsCostAtMostPatternTimesName) {
  std::string pattern;
  for (int i = 0; i < 100; ++i) pattern += "*a";
  pattern += "b";
  std::string name(255, 'a');
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(GlobMatch(pattern, name));
  // Quadratic at worst: ~50,000 steps.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(50));
}

}  // namespace
}  // namespace shmbroker
