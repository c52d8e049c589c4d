#include "train/run_signature.hpp"

#include <functional>
#include <vector>

#include "core/error.hpp"

namespace zerolora {
namespace {

std::string serialize(const RunSignature& s) {
  return nlohmann::json{{"kept", s.kept}, {"split", s.split}}.dump();
}

// Settings of `mine` whose values differ from `reference`'s, one "\n  name: A, B" line each,
// followed by what `hint` says of the setting and the reference's value ("" for nothing).
using Hint = std::function<std::string(const std::string& key, const std::string& reference)>;
std::string differences(const std::map<std::string, std::string>& reference,
                        const std::map<std::string, std::string>& mine,
                        const std::string& reference_name, const std::string& mine_name,
                        const Hint& hint = {}) {
  std::string lines;
  for (const auto& [key, value] : mine) {
    const auto it = reference.find(key);
    const std::string other = it == reference.end() ? "(absent)" : it->second;
    if (other == value) continue;
    lines += "\n  " + key + ": " + reference_name + " " + other + ", " + mine_name + " " + value;
    if (const std::string said = hint ? hint(key, other) : ""; !said.empty())
      lines += " (" + said + ")";
  }
  return lines;
}

}  // namespace

void RunSignature::keep(const std::string& name, std::string value, std::string flags,
                        bool as_given) {
  kept[name] = std::move(value);
  kept_sources[name] = {std::move(flags), as_given};
}

nlohmann::ordered_json RunSignature::to_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : kept) j[key] = value;
  return j;
}

std::string RunSignature::resume_differences(const nlohmann::ordered_json& saved) const {
  std::map<std::string, std::string> recorded;
  for (const auto& [key, value] : saved.items())
    if (kept.count(key) && value.is_string()) recorded[key] = value.get<std::string>();
  std::map<std::string, std::string> compared;
  for (const auto& [key, value] : kept)
    if (recorded.count(key)) compared[key] = value;
  return differences(recorded, compared, "checkpoint", "now",
                     [this](const std::string& key, const std::string& checkpoint) {
                       const auto source = kept_sources.find(key);
                       if (source == kept_sources.end()) return std::string();
                       if (source->second.as_given)
                         return "pass " + source->second.flags + " " + checkpoint;
                       return "set by " + source->second.flags;
                     });
}

void require_same_on_all_ranks(Communicator& comm, const RunSignature& signature) {
  if (comm.size() == 1) return;
  const std::string mine = serialize(signature);
  std::uint64_t length = mine.size();
  comm.broadcast(&length, sizeof(length), 0);
  std::string reference(length, '\0');
  if (comm.rank() == 0) reference = mine;
  comm.broadcast(reference.data(), length, 0);
  std::string lines;
  if (reference != mine) {
    const auto j = nlohmann::json::parse(reference);
    lines = differences(j["kept"].get<std::map<std::string, std::string>>(), signature.kept,
                        "rank 0", "here") +
            differences(j["split"].get<std::map<std::string, std::string>>(), signature.split,
                        "rank 0", "here");
  }
  const std::int64_t differs = lines.empty() ? 0 : 1;
  std::vector<std::int64_t> all(static_cast<std::size_t>(comm.size()));
  comm.all_gather(&differs, all.data(), sizeof(differs));
  std::string ranks;
  for (int r = 0; r < comm.size(); ++r)
    if (all[static_cast<std::size_t>(r)]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  if (ranks.empty()) return;
  throw ConfigError("the run's settings differ between ranks: rank(s) " + ranks +
                    " disagree with rank 0; every rank must run the same command on the same "
                    "files" +
                    lines);
}

}  // namespace zerolora
