// One Amora broker (primary or standby) as a Container App: the amora-broker image, one
// replica (mosquitto does not cluster), TCP ingress for devices (8883, mTLS), apps (8884)
// and web apps (8443, wss: TLS terminated by mosquitto), state on its own Azure Files share.

@description('Container App name.')
param name string

@description('Azure region.')
param location string

@description('Resource id of the Container Apps environment.')
param environmentId string

@description('Name of the environment storage (Azure Files share) for this broker\'s state.')
param stateStorageName string

@description('Name of the environment storage for the CRL share (written by authz).')
param crlStorageName string

@description('Image reference, e.g. myregistry.azurecr.io/amora-broker@sha256:...')
param image string

@description('Resource id of the user-assigned identity that reads Key Vault and pulls images.')
param identityId string

@description('Login server of the registry the image comes from.')
param registryServer string

@description('Key Vault URI (https://NAME.vault.azure.net/).')
param keyVaultUri string

@description('host:port of the primary\'s app listener; empty for the primary itself.')
param bridgeAddress string = ''

@description('Public TCP ports: device (mTLS), app (TLS), websockets (wss).')
param devicePort int = 8883
param appPort int = 8884
param wsPort int = 8443

@description('CPU cores and memory of the broker container (sized in docs/scaling.md).')
param cpu string = '1.0'
param memory string = '2Gi'

param tags object = {}

var secretFiles = [
  { name: 'device-ca-cert', path: 'device-ca.pem' }
  { name: 'broker-tls-cert', path: 'broker.pem' }
  { name: 'broker-tls-key', path: 'broker.key' }
  { name: 'broker-admin-password', path: 'broker-admin-password' }
  { name: 'bridge-password', path: 'bridge-password' }
]

var standbyEnv = empty(bridgeAddress) ? [] : [
  { name: 'AMORA_BROKER_BRIDGE_ADDRESS', value: bridgeAddress }
]

resource broker 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    configuration: {
      activeRevisionsMode: 'Single'
      // Secrets are Key Vault references read with the managed identity; they are mounted
      // as files where the image expects them (/run/secrets/amora).
      secrets: [for s in secretFiles: {
        name: s.name
        keyVaultUrl: '${keyVaultUri}secrets/${s.name}'
        identity: identityId
      }]
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      ingress: {
        external: true
        transport: 'tcp'
        targetPort: devicePort
        exposedPort: devicePort
        additionalPortMappings: [
          {
            external: true
            targetPort: appPort
            exposedPort: appPort
          }
          {
            external: true
            targetPort: wsPort
            exposedPort: wsPort
          }
        ]
      }
    }
    template: {
      containers: [
        {
          name: 'mosquitto'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: concat([
            { name: 'AMORA_BROKER_DEVICE_PORT', value: string(devicePort) }
            { name: 'AMORA_BROKER_APP_PORT', value: string(appPort) }
            { name: 'AMORA_BROKER_WS_PORT', value: string(wsPort) }
            { name: 'AMORA_BROKER_BRIDGE_USERNAME', value: 'svc.bridge-standby' }
            { name: 'AMORA_BROKER_BRIDGE_PASSWORD_FILE', value: '/run/secrets/amora/bridge-password' }
            { name: 'AMORA_BROKER_CRL_FILE', value: '/run/amora/crl/devices.crl.pem' }
            { name: 'AMORA_BROKER_CRL_WATCH_S', value: '10' }
          ], standbyEnv)
          probes: [
            {
              type: 'Startup'
              tcpSocket: { port: appPort }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Liveness'
              tcpSocket: { port: appPort }
              periodSeconds: 20
              failureThreshold: 3
            }
            {
              type: 'Readiness'
              tcpSocket: { port: devicePort }
              periodSeconds: 10
            }
          ]
          volumeMounts: [
            { volumeName: 'state', mountPath: '/var/lib/amora-broker' }
            { volumeName: 'run', mountPath: '/run/amora-broker' }
            { volumeName: 'secrets', mountPath: '/run/secrets/amora' }
            { volumeName: 'crl', mountPath: '/run/amora/crl' }
          ]
        }
      ]
      // Exactly one replica: a second mosquitto would be a second, separate broker.
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
      volumes: [
        {
          name: 'state'
          storageType: 'AzureFile'
          storageName: stateStorageName
          // The image runs as uid 10001; mosquitto must own its state (dynsec file).
          mountOptions: 'uid=10001,gid=10001,dir_mode=0700,file_mode=0600,nobrl'
        }
        {
          name: 'crl'
          storageType: 'AzureFile'
          storageName: crlStorageName
          mountOptions: 'uid=10001,gid=10001,dir_mode=0750,file_mode=0640'
        }
        {
          name: 'run'
          storageType: 'EmptyDir'
        }
        {
          name: 'secrets'
          storageType: 'Secret'
          secrets: [for s in secretFiles: {
            secretRef: s.name
            path: s.path
          }]
        }
      ]
    }
  }
}

@description('FQDN of the app (TCP ingress).')
output fqdn string = broker.properties.configuration.ingress.fqdn

@description('Name of the app, which other apps in the environment use to reach it.')
output name string = broker.name
