-- Argo CD health of an llmfleet.io LLMDeployment (Lua 5.1, as Argo CD's gopher-lua runs it).
--
-- Install it as argocd-cm's resource.customizations.health.llmfleet.io_LLMDeployment (see
-- docs/gitops.md). It reads what the operator writes, in the order kstatus does, so that Argo
-- CD and Flux agree:
--   status.observedGeneration behind metadata.generation   Progressing (not looked at yet)
--   Stalled=True                                           Degraded    (needs a human)
--   spec.suspend                                           Suspended   (scaled to zero)
--   a canary held by spec.rollout.paused                   Suspended   (as Argo Rollouts)
--   Reconciling=True                                       Progressing (converging by itself)
--   Ready=True                                             Healthy
--   anything else, e.g. no status yet                      Progressing
local hs = {}

local function condition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", or whichever of the two there is. Only the base library: Argo CD opens
-- no string library for argocd-cm scripts (unless useOpenLibs), so no string.* here.
local function says(c, fallback)
  if c == nil then
    return fallback
  end
  local reason, message = c.reason or "", c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local spec = obj.spec or {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the llmfleet operator to report status"
  return hs
end

if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the llmfleet operator to observe generation " .. tostring(generation)
    .. " (status is of generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local reconciling = condition(status, "Reconciling")
local stalled = condition(status, "Stalled")

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end

if spec.suspend == true then
  hs.status = "Suspended"
  if is_true(ready) and ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "suspending: " .. says(reconciling, "scaling to zero")
  end
  return hs
end

local rollout = status.rollout or {}
if rollout.phase == "Paused" or (is_true(reconciling) and reconciling.reason == "CanaryPaused") then
  hs.status = "Suspended"
  hs.message = says(reconciling, rollout.message or "canary paused (spec.rollout.paused)")
  return hs
end

if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = says(reconciling, "Reconciling")
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = says(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = says(ready, "waiting for the Ready condition")
return hs
