// Amora on Azure Container Apps (see README.md): a zone-redundant Container Apps environment
// in a VNet with the broker pair (primary + standby, TCP ingress) and the authz service,
// PostgreSQL flexible server (zone-redundant HA in prod), Key Vault read through managed
// identities, Azure Files for broker state and the device CRL, Log Analytics + Application
// Insights, and IoT Hub S1 for device management.
//
// Two passes (README.md): deployApps=false creates the platform (Key Vault first), you put
// the certificates and keys into the vault, then deployApps=true adds the Container Apps.

targetScope = 'resourceGroup'

@description('Short name prefix of every resource (lowercase letters and digits, 3-10).')
@minLength(3)
@maxLength(10)
param prefix string

@description('Environment name: dev or prod (sizes, HA and retention follow it).')
@allowed(['dev', 'prod'])
param env string

@description('Azure region (must have availability zones).')
param location string = resourceGroup().location

@description('false: platform only (network, Key Vault, database, storage, monitoring, IoT Hub). true: also the Container Apps.')
param deployApps bool = true

@description('Name of an existing Azure Container Registry in this resource group holding the images.')
param registryName string

@description('amora-broker image, by digest (e.g. myacr.azurecr.io/amora-broker@sha256:...).')
param brokerImage string

@description('amora-authz image, by digest.')
param authzImage string

@description('OIDC issuer of user tokens (Azure AD B2C policy issuer).')
param oidcIssuer string

@description('OIDC discovery document URL of that issuer.')
param oidcDiscoveryUrl string

@description('Audience (application id) user tokens are issued for.')
param oidcAudience string

@description('Claim listing a user\'s roles, and the role that makes an admin.')
param oidcRolesClaim string = 'extension_AmoraRoles'
param oidcAdminRole string = 'amora-admin'

@description('Public host name of the authz service (the SDK\'s authz_url); empty: the Container App\'s own FQDN.')
param authzHostName string = ''

@description('PostgreSQL administrator login (the authz service connects with it; rotate into a dedicated role after the first start).')
param postgresAdminLogin string = 'amoraadmin'

@description('PostgreSQL administrator password.')
@secure()
param postgresAdminPassword string

@description('Password of the brokers\' admin account (amora-authz), used by the authz service.')
@secure()
param brokerAdminPassword string

@description('Password of the standby\'s bridge account on the primary.')
@secure()
param bridgePassword string

@description('Address space of the VNet and its subnets: Container Apps (/23 at least), PostgreSQL, private endpoints.')
param vnetAddressPrefix string = '10.40.0.0/16'
param appsSubnetPrefix string = '10.40.0.0/23'
param postgresSubnetPrefix string = '10.40.2.0/24'
param endpointsSubnetPrefix string = '10.40.3.0/24'

@description('IoT Hub S1 units (400,000 messages a day each).')
@minValue(1)
param iotHubUnits int = 1

@description('Object id of the operator (user or group) allowed to write Key Vault secrets.')
param operatorObjectId string

param tags object = {}

@description('E-mail addresses the alerts go to (modules/monitoring.bicep); empty: alerts fire without notifying.')
param alertEmails array = []

@description('Expiry of the secrets this template writes (default: a year from the deployment).')
param secretExpiry string = dateTimeAdd(utcNow(), 'P1Y')

var isProd = env == 'prod'
var name = '${prefix}-${env}'
var kvName = take('${prefix}${env}kv${uniqueString(resourceGroup().id)}', 24)
var storageName = take('${prefix}${env}st${uniqueString(resourceGroup().id)}', 24)
var allTags = union(tags, { application: 'amora', environment: env })
// Built-in role definition ids.
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// ---- network ------------------------------------------------------------------------------

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: '${name}-vnet'
  location: location
  tags: allTags
  properties: {
    addressSpace: { addressPrefixes: [vnetAddressPrefix] }
    subnets: [
      {
        // Container Apps (workload profiles): /23 or larger, delegated.
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          delegations: [{ name: 'apps', properties: { serviceName: 'Microsoft.App/environments' } }]
          serviceEndpoints: [{ service: 'Microsoft.Storage' }]
          networkSecurityGroup: { id: nsg.id }
        }
      }
      {
        name: 'postgres'
        properties: {
          addressPrefix: postgresSubnetPrefix
          delegations: [{ name: 'postgres', properties: { serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers' } }]
          networkSecurityGroup: { id: nsg.id }
        }
      }
      {
        name: 'endpoints'
        properties: {
          addressPrefix: endpointsSubnetPrefix
          networkSecurityGroup: { id: nsg.id }
        }
      }
    ]
  }
}

// Inbound from the internet only to what the apps expose; the platform's own rules do the rest.
resource nsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${name}-nsg'
  location: location
  tags: allTags
  properties: {
    securityRules: [
      {
        name: 'mqtt-and-https-in'
        properties: {
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: 'VirtualNetwork'
          destinationPortRanges: ['443', '8883', '8884', '8443', '9883', '9884', '9443']
        }
      }
    ]
  }
}

// ---- monitoring ---------------------------------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs'
  location: location
  tags: allTags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: isProd ? 90 : 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights'
  location: location
  kind: 'web'
  tags: allTags
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// Alerts (broker down, standby lag, agent disconnects, command failures and latency, session
// refusals), the workbook, and the players' Application Insights (docs/observability.md).
module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: name
    location: location
    tags: allTags
    workspaceId: logs.id
    alertEmails: alertEmails
  }
}

// ---- identities and Key Vault -------------------------------------------------------------

resource brokerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-broker-id'
  location: location
  tags: allTags
}

resource authzIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-authz-id'
  location: location
  tags: allTags
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: kvName
  location: location
  tags: allTags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    // Reached from the VNet through the private endpoint below; the operator uploads the
    // certificates from an address listed in networkAcls or through the VNet.
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Deny'
    }
  }
}

resource vaultEndpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: '${name}-kv-pe'
  location: location
  tags: allTags
  properties: {
    subnet: { id: vnet.properties.subnets[2].id }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: {
          privateLinkServiceId: vault.id
          groupIds: ['vault']
        }
      }
    ]
  }
}

resource vaultDns 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: 'privatelink.vaultcore.azure.net'
  location: 'global'
  tags: allTags
}

resource vaultDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: vaultDns
  name: '${name}-vnet'
  location: 'global'
  properties: {
    virtualNetwork: { id: vnet.id }
    registrationEnabled: false
  }
}

resource vaultDnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = {
  parent: vaultEndpoint
  name: 'vault'
  properties: {
    privateDnsZoneConfigs: [{ name: 'vault', properties: { privateDnsZoneId: vaultDns.id } }]
  }
}

resource brokerReadsVault 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, brokerIdentity.id, keyVaultSecretsUser)
  properties: {
    principalId: brokerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource authzReadsVault 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, authzIdentity.id, keyVaultSecretsUser)
  properties: {
    principalId: authzIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

// The authz service publishes its telemetry to Application Insights with its identity.
resource authzPublishesTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: insights
  name: guid(insights.id, authzIdentity.id, monitoringMetricsPublisher)
  properties: {
    principalId: authzIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

resource operatorWritesVault 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, operatorObjectId, keyVaultSecretsOfficer)
  properties: {
    principalId: operatorObjectId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

resource brokerPullsImages 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, brokerIdentity.id, acrPull)
  properties: {
    principalId: brokerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

resource authzPullsImages 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: registry
  name: guid(registry.id, authzIdentity.id, acrPull)
  properties: {
    principalId: authzIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

// Secrets the template knows (passwords given as secure parameters, the authz configuration
// it renders). Certificates and keys are put into the vault by the operator (README.md).
var expiry = dateTimeToEpoch(secretExpiry)

resource brokerAdminSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'broker-admin-password'
  properties: {
    value: brokerAdminPassword
    contentType: 'text/plain'
    attributes: { exp: expiry }
  }
}

resource bridgeSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'bridge-password'
  properties: {
    value: bridgePassword
    contentType: 'text/plain'
    attributes: { exp: expiry }
  }
}

// ---- PostgreSQL (the authz service's database) ---------------------------------------------

resource postgresDns 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: '${name}.private.postgres.database.azure.com'
  location: 'global'
  tags: allTags
}

resource postgresDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: postgresDns
  name: '${name}-vnet'
  location: 'global'
  properties: {
    virtualNetwork: { id: vnet.id }
    registrationEnabled: false
  }
}

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2023-06-01-preview' = {
  name: '${name}-pg'
  location: location
  tags: allTags
  // Burstable (dev) cannot have high availability; General Purpose (prod) can.
  sku: isProd ? { name: 'Standard_D2ds_v5', tier: 'GeneralPurpose' } : { name: 'Standard_B1ms', tier: 'Burstable' }
  properties: {
    version: '16'
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    storage: { storageSizeGB: 32, autoGrow: 'Enabled' }
    backup: {
      backupRetentionDays: isProd ? 35 : 7
      geoRedundantBackup: isProd ? 'Enabled' : 'Disabled'
    }
    availabilityZone: '1'
    highAvailability: isProd ? { mode: 'ZoneRedundant', standbyAvailabilityZone: '2' } : { mode: 'Disabled' }
    network: {
      delegatedSubnetResourceId: vnet.properties.subnets[1].id
      privateDnsZoneArmResourceId: postgresDns.id
      publicNetworkAccess: 'Disabled'
    }
  }
  dependsOn: [postgresDnsLink]
}

resource postgresDb 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2023-06-01-preview' = {
  parent: postgres
  name: 'amora_authz'
  properties: { charset: 'UTF8', collation: 'en_US.utf8' }
}

resource postgresTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2023-06-01-preview' = {
  parent: postgres
  name: 'require_secure_transport'
  properties: { value: 'on', source: 'user-override' }
}

// ---- Azure Files: broker state (one share each) and the CRL (shared) ---------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206: ZRS is the replication chosen: copies in three zones of the region; the shares hold broker state that devices republish and a CRL the authz database can rewrite, so geo-replication buys nothing a region failover would use
  // checkov:skip=CKV_AZURE_43: the name is computed (take(prefix + env + 'st' + uniqueString(), 24)): lowercase letters and digits within 3-24 characters by construction, which checkov cannot evaluate
  name: storageName
  location: location
  tags: allTags
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Container Apps mounts Azure Files with the account key (SMB): shared keys stay on.
    allowSharedKeyAccess: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Deny'
      virtualNetworkRules: [{ id: vnet.properties.subnets[0].id, action: 'Allow' }]
    }
  }
}

resource files 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    shareDeleteRetentionPolicy: { enabled: true, days: 14 }
  }
}

var shares = ['broker-primary', 'broker-standby', 'crl']

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = [for s in shares: {
  parent: files
  name: s
  properties: { shareQuota: 8, enabledProtocols: 'SMB' }
}]

// ---- IoT Hub (device identity, twin, telemetry; never on the real-time path) -------------

resource iotHub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: '${name}-iot-${uniqueString(resourceGroup().id)}'
  location: location
  tags: allTags
  // One S1 unit carries 400,000 messages a day: 1,400 agents sending telemetry every 600 s
  // (201,600) plus twin traffic. At the agent's default of 300 s it would take two units.
  sku: { name: 'S1', capacity: iotHubUnits }
  properties: {
    minTlsVersion: '1.2'
    disableLocalAuth: false
    publicNetworkAccess: 'Enabled'
    features: 'None'
  }
}

// ---- Container Apps -----------------------------------------------------------------------

resource appsEnv 'Microsoft.App/managedEnvironments@2024-03-01' = if (deployApps) {
  name: '${name}-apps'
  location: location
  tags: allTags
  properties: {
    zoneRedundant: true
    vnetConfiguration: {
      infrastructureSubnetId: vnet.properties.subnets[0].id
      internal: false
    }
    workloadProfiles: [{ name: 'Consumption', workloadProfileType: 'Consumption' }]
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource envShares 'Microsoft.App/managedEnvironments/storages@2024-03-01' = [for s in shares: if (deployApps) {
  parent: appsEnv
  name: s
  properties: {
    azureFile: {
      accountName: storage.name
      accountKey: storage.listKeys().keys[0].value
      shareName: s
      accessMode: 'ReadWrite'
    }
  }
}]

module primary 'modules/broker-app.bicep' = if (deployApps) {
  name: 'broker-primary'
  params: {
    name: '${name}-broker'
    location: location
    environmentId: appsEnv.id
    stateStorageName: 'broker-primary'
    crlStorageName: 'crl'
    image: brokerImage
    identityId: brokerIdentity.id
    registryServer: registry.properties.loginServer
    keyVaultUri: vault.properties.vaultUri
    // mosquitto uses one core at most; 6,400 TLS connections ran at ~172 MiB (docs/scaling.md).
    cpu: isProd ? '1.0' : '0.5'
    memory: isProd ? '2Gi' : '1Gi'
    tags: allTags
  }
  dependsOn: [envShares, brokerReadsVault, brokerPullsImages, brokerAdminSecret, bridgeSecret]
}

// The standby: the same image with bridge settings; its TCP ports differ from the
// primary's because exposed TCP ports are unique per environment (one public IP).
module standby 'modules/broker-app.bicep' = if (deployApps) {
  name: 'broker-standby'
  params: {
    name: '${name}-broker-standby'
    location: location
    environmentId: appsEnv.id
    stateStorageName: 'broker-standby'
    crlStorageName: 'crl'
    image: brokerImage
    identityId: brokerIdentity.id
    registryServer: registry.properties.loginServer
    keyVaultUri: vault.properties.vaultUri
    bridgeAddress: '${name}-broker:8884'
    devicePort: 9883
    appPort: 9884
    wsPort: 9443
    // mosquitto uses one core at most; 6,400 TLS connections ran at ~172 MiB (docs/scaling.md).
    cpu: isProd ? '1.0' : '0.5'
    memory: isProd ? '2Gi' : '1Gi'
    tags: allTags
  }
  dependsOn: [envShares, brokerReadsVault, brokerPullsImages, brokerAdminSecret, bridgeSecret]
}

var authzFqdn = empty(authzHostName) ? '${name}-authz.${deployApps ? appsEnv.properties.defaultDomain : 'example.invalid'}' : authzHostName
var brokerHost = deployApps ? appsEnv.properties.staticIp : ''
var envDomain = deployApps ? appsEnv.properties.defaultDomain : 'example.invalid'
var primaryHost = '${name}-broker.${envDomain}'
var standbyHost = '${name}-broker-standby.${envDomain}'

// The authz configuration (TOML), rendered here and kept in the vault: it holds the brokers'
// admin password and the database URL. Environment variables cannot carry [[brokers]].
var authzConfig = join([
  'database_url = "postgresql://${postgresAdminLogin}:${uriComponent(postgresAdminPassword)}@${postgres.properties.fullyQualifiedDomainName}:5432/amora_authz?sslmode=require"'
  'listen_host = "0.0.0.0"'
  'listen_port = 8080'
  'public_url = "https://${authzFqdn}"'
  'state_dir = "/var/lib/amora-authz/state"'
  'signing_key_files = ["/run/secrets/amora/grant-signing-key.pem"]'
  'session_secret_file = "/run/secrets/amora/session-secret"'
  'device_ca_cert = "/run/secrets/amora/device-ca.pem"'
  'device_ca_key = "/run/secrets/amora/device-ca.key"'
  'crl_file = "/run/amora/crl/devices.crl.pem"'
  '# The brokers reload the CRL themselves when the file changes (AMORA_BROKER_CRL_WATCH_S).'
  'crl_reload_command = []'
  'log_json = true'
  ''
  '[oidc]'
  'issuer = "${oidcIssuer}"'
  'discovery_url = "${oidcDiscoveryUrl}"'
  'audience = "${oidcAudience}"'
  'algorithms = ["RS256"]'
  'roles_claim = "${oidcRolesClaim}"'
  'admin_role = "${oidcAdminRole}"'
  ''
  '[[brokers]]'
  'name = "primary"'
  'host = "${name}-broker"'
  'port = 8884'
  'username = "svc.amora-authz"'
  'password = "${brokerAdminPassword}"'
  'ca_file = "/run/secrets/amora/device-ca.pem"'
  'client_endpoints = ["mqtts://${primaryHost}:8884", "wss://${primaryHost}:8443/mqtt"]'
  ''
  '[[brokers]]'
  'name = "standby"'
  'host = "${name}-broker-standby"'
  'port = 9884'
  'username = "svc.amora-authz"'
  'password = "${brokerAdminPassword}"'
  'ca_file = "/run/secrets/amora/device-ca.pem"'
  'client_endpoints = ["mqtts://${standbyHost}:9884", "wss://${standbyHost}:9443/mqtt"]'
  ''
], '\n')

resource authzConfigSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'authz-config'
  properties: {
    value: authzConfig
    contentType: 'application/toml'
    attributes: { exp: expiry }
  }
}

var authzSecretFiles = [
  { name: 'authz-config', path: 'authz.toml' }
  { name: 'device-ca-cert', path: 'device-ca.pem' }
  { name: 'device-ca-key', path: 'device-ca.key' }
  { name: 'grant-signing-key', path: 'grant-signing-key.pem' }
  { name: 'session-secret', path: 'session-secret' }
]

resource authz 'Microsoft.App/containerApps@2024-03-01' = if (deployApps) {
  name: '${name}-authz'
  location: location
  tags: allTags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${authzIdentity.id}': {} }
  }
  properties: {
    environmentId: appsEnv.id
    configuration: {
      activeRevisionsMode: 'Single'
      secrets: [for s in authzSecretFiles: {
        name: s.name
        keyVaultUrl: '${vault.properties.vaultUri}secrets/${s.name}'
        identity: authzIdentity.id
      }]
      registries: [{ server: registry.properties.loginServer, identity: authzIdentity.id }]
      ingress: {
        external: true
        transport: 'http'
        targetPort: 8080
        allowInsecure: false
      }
    }
    template: {
      containers: [
        {
          name: 'authz'
          image: authzImage
          args: ['--config', '/run/secrets/amora/authz.toml', 'serve']
          resources: { cpu: json('0.5'), memory: '1Gi' }
          // OpenTelemetry to Application Insights through the Azure Monitor distro, signed in
          // with the app's managed identity (the component refuses its instrumentation key).
          env: [
            { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
            { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD;ClientId=${authzIdentity.properties.clientId}' }
          ]
          probes: [
            { type: 'Startup', httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 2, failureThreshold: 30 }
            { type: 'Liveness', httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 20 }
            { type: 'Readiness', httpGet: { path: '/readyz/serving', port: 8080 }, periodSeconds: 10 } // /readyz (every broker caught up) feeds the availability test and alerts
          ]
          volumeMounts: [
            { volumeName: 'secrets', mountPath: '/run/secrets/amora' }
            { volumeName: 'crl', mountPath: '/run/amora/crl' }
            { volumeName: 'state', mountPath: '/var/lib/amora-authz' }
          ]
        }
      ]
      // At least two replicas, spread over zones by the zone-redundant environment.
      scale: {
        minReplicas: isProd ? 3 : 2
        maxReplicas: isProd ? 10 : 3
        rules: [{ name: 'http', http: { metadata: { concurrentRequests: '50' } } }]
      }
      volumes: [
        {
          name: 'secrets'
          storageType: 'Secret'
          secrets: [for s in authzSecretFiles: { secretRef: s.name, path: s.path }]
        }
        {
          name: 'crl'
          storageType: 'AzureFile'
          storageName: 'crl'
          mountOptions: 'uid=10001,gid=10001,dir_mode=0750,file_mode=0640'
        }
        { name: 'state', storageType: 'EmptyDir' }
      ]
    }
  }
  dependsOn: [envShares, authzReadsVault, authzPullsImages, authzConfigSecret, authzPublishesTelemetry]
}

// Application Insights checks the service from outside every 5 minutes from three regions
// (the service itself logs to Log Analytics through the environment).
resource readyTest 'Microsoft.Insights/webtests@2022-06-15' = if (deployApps) {
  name: '${name}-authz-ready'
  location: location
  kind: 'standard'
  tags: union(allTags, { 'hidden-link:${insights.id}': 'Resource' })
  properties: {
    SyntheticMonitorId: '${name}-authz-ready'
    Name: 'authz /readyz'
    Kind: 'standard'
    Enabled: true
    Frequency: 300
    Timeout: 30
    RetryEnabled: true
    Locations: [
      { Id: 'emea-nl-ams-azr' }
      { Id: 'us-va-ash-azr' }
      { Id: 'apac-sg-sin-azr' }
    ]
    Request: {
      RequestUrl: 'https://${authzFqdn}/readyz'
      HttpVerb: 'GET'
    }
    ValidationRules: {
      ExpectedHttpStatusCode: 200
      SSLCheck: true
      SSLCertRemainingLifetimeCheck: 14
    }
  }
  dependsOn: [authz]
}

// ---- outputs: what the agent's and the SDK's configurations need -------------------------

@description('Agent [[brokers]] (in order of preference) and IoT Hub host; the device listener is mTLS.')
output agentBrokers array = deployApps ? [
  { host: primaryHost, port: 8883 }
  { host: standbyHost, port: 9883 }
] : []

@description('IoT Hub host name (the agent\'s [iothub] connection string names it).')
output iotHubHostName string = iotHub.properties.hostName

@description('Where the agent\'s trusted_authz_keys come from (also delivered through the device twin).')
output authzKeysUrl string = 'https://${authzFqdn}/.well-known/amora-keys'

@description('The SDK\'s authz_url: sessions and broker endpoints come from there.')
output sdkAuthzUrl string = 'https://${authzFqdn}'

@description('The environment\'s public IP (DNS records for custom names point here).')
output publicIp string = brokerHost

@description('The agents\' APPLICATIONINSIGHTS_CONNECTION_STRING (players\' telemetry, docs/observability.md).')
output agentTelemetryConnectionString string = monitoring.outputs.fleetConnectionString

@description('The vault to put the certificates and keys into (README.md).')
output keyVaultName string = vault.name
