#include "core/exit_codes.hpp"

#include <filesystem>
#include <new>

#include "core/error.hpp"

namespace zerolora {

ExitReport exit_report(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const UsageError& e) {
    return {2, std::string(e.what()) + " (run with --help for usage)"};
  } catch (const InternalError& e) {
    return {70, std::string(e.what()) + " -- this is a bug in zerolora; please report it"};
  } catch (const Error& e) {
    return {1, std::string("error: ") + e.what()};
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the user gave that the system refused: their environment, not a bug.
    std::string where = e.path1().string();
    if (!e.path2().empty()) where += " -> " + e.path2().string();
    return {1, "error: " + (where.empty() ? std::string() : where + ": ") + e.code().message()};
  } catch (const std::bad_alloc&) {
    return {1, "error: out of memory"};
  } catch (const std::exception& e) {
    return {70, std::string("unexpected error: ") + e.what()};
  } catch (...) {
    return {70, "unexpected error of unknown type"};
  }
}

}  // namespace zerolora
