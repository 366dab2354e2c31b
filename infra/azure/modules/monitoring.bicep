// Amora's alerts and dashboard on Azure Monitor (docs/observability.md).
//
// Every signal is an OpenTelemetry metric or span sent by the Azure Monitor OpenTelemetry
// distro: the authz service (its own metrics and the brokers' $SYS statistics it exports)
// writes to the environment's Application Insights; players write to a second component,
// `<name>-fleet-insights`, whose connection string the agents get through the device twin
// (players have no Entra identity, so that component accepts its instrumentation key).
// Both are workspace-based: the queries below read the workspace's AppMetrics and
// AppRequests tables. The metric names are the instruments' (docs/observability.md, first
// column); tools/deploy_check.py checks that every name used here is documented.

@description('Resource name prefix (<prefix>-<env>).')
param name string

param location string
param tags object

@description('The Log Analytics workspace both Application Insights components write to.')
param workspaceId string

@description('Where alerts go: e-mail addresses of the on-call (empty: alerts fire without notifying).')
param alertEmails array = []

@description('Sessions refused in 5 minutes that count as a spike (bad tokens, rate limits, brokers down).')
param sessionRefusalThreshold int = 50

@description('Command failures (failed and rejected answers, fleet-wide) per 5 minutes that page.')
param commandFailureThreshold int = 20

@description('p99 of the agents\' command handling, in milliseconds, above which to alert.')
param commandLatencyP99Ms int = 500

@description('Agent reconnections per 5 minutes, fleet-wide, that count as a disconnect wave.')
param agentReconnectThreshold int = 100

resource fleetInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-fleet-insights'
  location: location
  kind: 'other'
  tags: tags
  properties: {
    Application_Type: 'other'
    WorkspaceResourceId: workspaceId
    // Players have no Entra identity: this component takes their telemetry with its
    // ingestion key (which writes telemetry and reads nothing); the service's own component
    // keeps local authentication off.
    DisableLocalAuth: false
  }
}

resource oncall 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${name}-oncall'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'amora'
    enabled: true
    emailReceivers: [for (address, i) in alertEmails: {
      name: 'oncall-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
  }
}

// name, severity (0 critical .. 4 verbose), window and frequency (minutes), query, threshold,
// description. Each query returns one row per breach (count > threshold fires). Multi-line
// strings take no interpolation in Bicep: thresholds go in through format().
var alerts = [
  {
    name: 'broker-down'
    severity: 0
    window: 5
    frequency: 1
    threshold: 0
    description: 'A broker did not answer the authz service for 5 minutes (amora_authz_broker_reachable = 0), or stopped publishing its $SYS statistics.'
    query: '''
AppMetrics
| where Name in ("amora_authz_broker_reachable", "amora_broker_uptime")
| extend broker = tostring(Properties["broker"])
| summarize reachable = maxif(Max, Name == "amora_authz_broker_reachable"), sys = countif(Name == "amora_broker_uptime") by broker
| where reachable < 1 or sys == 0
'''
  }
  {
    name: 'standby-lag'
    severity: 1
    window: 15
    frequency: 5
    threshold: 0
    description: 'A broker has missed access changes for 15 minutes (amora_authz_broker_behind = 1 throughout), or the standby\'s bridge to the primary is down.'
    query: '''
AppMetrics
| where Name in ("amora_authz_broker_behind", "amora_broker_bridge_connected")
| extend broker = tostring(Properties["broker"])
| summarize behind = min(Min), bridge = max(Max) by Name, broker
| where (Name == "amora_authz_broker_behind" and behind >= 1) or (Name == "amora_broker_bridge_connected" and bridge < 1)
'''
  }
  {
    name: 'agent-disconnect-rate'
    severity: 2
    window: 5
    frequency: 5
    threshold: 0
    description: 'More agents reconnected to the brokers in 5 minutes than agentReconnectThreshold (amora_agent_mqtt_reconnects): a network or broker incident.'
    query: format('''
AppMetrics
| where Name == "amora_agent_mqtt_reconnects"
| summarize reconnects = sum(Sum)
| where reconnects > {0}
''', agentReconnectThreshold)
  }
  {
    name: 'command-failure-rate'
    severity: 2
    window: 5
    frequency: 5
    threshold: 0
    description: 'Commands answered failed or rejected (except busy and version-mismatch, which apps retry) above commandFailureThreshold in 5 minutes (amora_agent_commands).'
    query: format('''
AppMetrics
| where Name == "amora_agent_commands"
| extend outcome = tostring(Properties["outcome"]), reason = tostring(Properties["reason"])
| where outcome in ("failed", "rejected") and reason !in ("busy", "version-mismatch")
| summarize failures = sum(Sum)
| where failures > {0}
''', commandFailureThreshold)
  }
  {
    name: 'command-latency-p99'
    severity: 2
    window: 15
    frequency: 5
    threshold: 0
    description: 'The p99 of the agents\' command handling (span amora.command process: verification, replay log, MPD) above commandLatencyP99Ms over 15 minutes.'
    query: format('''
AppRequests
| where Name == "amora.command process"
| summarize p99 = percentile(DurationMs, 99), commands = count()
| where commands >= 20 and p99 > {0}
''', commandLatencyP99Ms)
  }
  {
    name: 'session-refusal-spike'
    severity: 2
    window: 5
    frequency: 5
    threshold: 0
    description: 'More session creations or refreshes refused in 5 minutes than sessionRefusalThreshold (amora_authz_sessions_refused, by reason).'
    query: format('''
AppMetrics
| where Name == "amora_authz_sessions_refused"
| extend reason = tostring(Properties["reason"])
| summarize refused = sum(Sum) by reason
| where refused > {0}
''', sessionRefusalThreshold)
  }
]

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in alerts: {
  name: '${name}-${alert.name}'
  location: location
  tags: tags
  properties: {
    displayName: 'Amora: ${alert.name}'
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [workspaceId]
    evaluationFrequency: 'PT${alert.frequency}M'
    windowSize: 'PT${alert.window}M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: alert.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: alert.threshold
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    actions: { actionGroups: [oncall.id] }
  }
}]

resource dashboard 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, name, 'amora-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Amora: brokers, sessions, commands'
    category: 'workbook'
    sourceId: workspaceId
    serializedData: loadTextContent('../monitoring-workbook.json')
  }
}

@description('The agents\' APPLICATIONINSIGHTS_CONNECTION_STRING (through the device twin or the unit\'s environment).')
output fleetConnectionString string = fleetInsights.properties.ConnectionString

output alertRuleNames array = [for (alert, i) in alerts: rules[i].name]
