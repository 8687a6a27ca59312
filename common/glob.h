// Shell-style globs as fnmatch(3) with no flags reads them ('*' also matches '/', backslash
// escapes, [...] with ranges, '!' or '^' negation and [:class:]), matched in O(pattern x name)
// time at worst, without allocating: the daemon bounds each request's work by the sizes it
// accepts, which needs a matcher whose cost it knows. Internal; not installed.
#pragma once

#include <string_view>

namespace shmbroker {

bool GlobMatch(std::string_view pattern, std::string_view name);

}  // namespace shmbroker
